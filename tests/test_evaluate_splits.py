"""Fold construction of the evaluation splits (rulefinder.classify.evaluate)."""

import numpy as np
import xarray as xr

from rulefinder.classify.evaluate import variant_folds


def test_variant_fold_k_holds_out_variant_k_of_every_rule():
    rules = ["bp", "bp", "bp", "fa", "fa", "fa", "np"]
    variants = ["default", "mse", "softmax", "default", "gauss", "default", "default"]
    table = xr.Dataset({"rule": ("sample", rules), "variant": ("sample", variants)})
    folds = variant_folds(table)
    assert folds.tolist() == ["v0", "v1", "v2", "v0", "v1", "v0", "v0"]
    # Three folds, not one per variant name: each holds one variant of every rule that has it.
    assert np.unique(folds).size == 3
