"""The features the shipped model was trained on, held to stored values.

The default model was fitted on features of a 15k-network zoo computed by the code as of commit
780987d; the speed work after it must not change a feature beyond float rounding, or the model
would have to be retrained. ``tests/data/feature_reference.npz`` holds, for a few small varied
recordings (one area, several and interleaved areas, lost values, an area missing a whole
session, irregular times, offset and constant units, float32 input), the area rows of the
default feature set and the batched statistics path as that commit computed them; the current
code must give them to 1e-9 relative (of each row's largest value for the dimensionless rows).

Regenerate only for an intended change of the features (which needs a retrained default):
``PYTHONPATH=<tree> .venv/bin/python tests/test_features_reference.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from rulefinder.classify.features import area_feature_rows
from rulefinder.features import block_features
from rulefinder.recording import make_recording

REFERENCE = Path(__file__).parent / "data" / "feature_reference.npz"
FEATURE_SET = "stats+change+structure+progress+spread"  # the shipped default's
N_TIMES = 8
RTOL = 1e-9


def _recordings() -> dict:
    r = np.random.default_rng(11)
    out = {}
    out["one_area"] = make_recording(np.cumsum(r.normal(size=(7, 9, 12)), axis=0))
    y = r.normal(size=(9, 10, 14)) + np.linspace(0, 1, 9)[:, None, None] * r.normal(size=(1, 10, 14))
    y[r.random(y.shape) < 0.05] = np.nan
    out["lost_values"] = make_recording(y, unit_area=np.repeat(["a", "b"], 7), area_order=["a", "b"])
    z = np.maximum(r.normal(size=(6, 8, 9)), 0)
    z[3, :, :3] = np.nan  # area a misses session 3
    out["area_missing_session"] = make_recording(z, unit_area=np.repeat(["a", "b", "c"], 3), area_order=["a", "b", "c"])
    ua = np.concatenate([[f"A{i}"] * c for i, c in enumerate([2, 3, 5, 4])])
    m = np.cumsum(r.normal(size=(11, 8, ua.size)) * 0.3, axis=0) + r.normal(size=(1, 8, ua.size))
    out["interleaved_areas"] = make_recording(m, unit_area=ua[r.permutation(ua.size)], area_order=["A0", "A1", "A2", "A3"])
    st = np.concatenate([[0.0], np.sort(r.uniform(0, 50, size=9))])
    out["irregular_times"] = make_recording(np.cumsum(r.normal(size=(10, 6, 8)), axis=0), session_time=st,
                                            unit_area=np.repeat(["x", "y"], 4))
    c = 1000 + np.cumsum(r.normal(size=(5, 7, 6)) * 0.1, axis=0)
    c[:, :, :2] = 3.0  # constant units on an offset
    out["offset_constant"] = make_recording(c, performance=np.linspace(0.1, 0.9, 5))
    out["float32"] = make_recording(np.maximum(r.normal(size=(8, 6, 10)), 0).astype(np.float32),
                                    unit_area=np.repeat(["l0", "l1"], 5), area_order=["l0", "l1"])
    return out


def _block() -> np.ndarray:
    rng = np.random.default_rng(12)
    b = np.maximum(rng.standard_normal((3, 9, 6, 10), dtype=np.float32), 0)
    b[1, 4, 3, 5] = np.nan
    return b


def compute() -> dict[str, np.ndarray]:
    out = {name: area_feature_rows([rec], n_times=N_TIMES, feature_set=FEATURE_SET).values
           for name, rec in _recordings().items()}
    out["block"] = block_features(_block(), np.arange(9), np.repeat(["l0", "l1"], 5), ["l0", "l1"], n_threads=1).values
    return out


@pytest.mark.parametrize("name", [*_recordings(), "block"])
def test_features_equal_the_values_the_default_was_trained_on(name):
    ref = np.load(REFERENCE, allow_pickle=False)[name]
    new = compute()[name] if name == "block" else area_feature_rows(
        [_recordings()[name]], n_times=N_TIMES, feature_set=FEATURE_SET).values
    assert new.shape == ref.shape
    np.testing.assert_array_equal(np.isnan(new), np.isnan(ref))
    new, ref = np.nan_to_num(new), np.nan_to_num(ref)
    # Relative to the value, or for values near 0 (a change from the first session, a mean of a
    # symmetric set) to a millionth of the feature's largest magnitude over the rows.
    bound = RTOL * np.maximum(np.abs(ref), 1e-6 * np.abs(ref).max(axis=tuple(range(ref.ndim - 1)), keepdims=True))
    over = np.abs(new - ref) > bound
    assert not over.any(), f"{name}: {int(over.sum())} values beyond rounding, first at {np.argwhere(over)[0].tolist()}"


if __name__ == "__main__":  # regenerate (see the module docstring)
    REFERENCE.parent.mkdir(exist_ok=True)
    np.savez_compressed(REFERENCE, **compute())
    print(f"wrote {REFERENCE}", file=sys.stderr)
