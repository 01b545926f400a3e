"""The real components together (slow tier): a zoo spec trained into a Zarr store on disk,
the store listed by the CLI, its recordings featurised and seen through a virtual
experiment, and the result written and read back in every upload format."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from rulefinder.features import FeatureExtractor
from rulefinder.recording import (
    load_npz,
    load_nwb,
    load_zarr_zip,
    save_npz,
    save_zarr_zip,
    validate_recording,
    write_nwb_sessions,
)
from rulefinder.store import ZooStore
from rulefinder.virtual import VirtualExperiment
from training_zoo.local_run import run_zoo

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smoke_store(tmp_path_factory):
    url = str(tmp_path_factory.mktemp("zoo") / "smoke.zarr")
    counts = run_zoo("smoke", url, progress=False)
    return url, counts


def test_smoke_zoo_lands_complete_in_the_store(smoke_store):
    url, counts = smoke_store
    assert counts["run"] == counts["shards"] > 0
    store = ZooStore.open(url)
    listing = store.networks()
    assert listing.sizes["network"] == counts["networks"]
    assert bool(listing["complete"].all())
    assert set(listing["rule"].values.tolist()) == {"backprop", "feedback_alignment"}
    assert {"mlp", "cnn"} <= set(listing["arch_family"].values.tolist())


def test_resume_skips_complete_shards(smoke_store):
    url, counts = smoke_store
    again = run_zoo("smoke", url, resume=True, progress=False)
    assert again["skipped"] == counts["shards"] and again["run"] == 0


def test_store_info_cli_counts_the_zoo(smoke_store):
    url, counts = smoke_store
    out = subprocess.run(
        [sys.executable, "-m", "rulefinder", "store", "info", url, "--json"],
        capture_output=True, text=True, check=True,
    )
    info = json.loads(out.stdout)
    assert sum(info["networks_per_rule"].values()) == counts["networks"]
    assert info["incomplete"] == 0


def test_zoo_recordings_through_features_virtual_experiments_and_formats(smoke_store, tmp_path):
    url, _ = smoke_store
    store = ZooStore.open(url)
    pairs = list(store.iter_recordings())
    recs = [validate_recording(rec, network_id) for network_id, rec in pairs]
    # learning shows in the recordings: test accuracy rises over the checkpoints on average
    gains = [r.performance.values[-1] - r.performance.values[0] for r in recs]
    assert np.mean(gains) > 0.2

    features = FeatureExtractor().transform(recs)
    assert np.isfinite(features.values).all()
    assert features.sizes["sample"] == sum(len(r.attrs["area_order"]) for r in recs)

    ve = VirtualExperiment(
        steps=[
            {"op": "keep_units", "n": 4, "per_area": True},
            {"op": "keep_sessions", "n": 4, "mode": "even"},
            {"op": "gaussian_noise", "snr": "moderate"},
        ],
        seed=3,
    )
    seen = ve(recs[0])
    assert seen.sizes["session"] == 4
    assert json.loads(seen.attrs["virtual"])["seed"] == 3

    from_npz = load_npz(save_npz(seen, tmp_path / "seen.npz"))
    from_zarr = load_zarr_zip(save_zarr_zip(seen, tmp_path / "seen.zarr.zip"))
    np.testing.assert_array_equal(from_npz.values, seen.values)
    np.testing.assert_array_equal(from_zarr.values, seen.values)
    assert from_zarr.attrs["virtual"] == seen.attrs["virtual"]
    from_nwb = load_nwb(write_nwb_sessions(seen, tmp_path / "nwb"))
    ids = from_nwb.coords["unit"].values
    np.testing.assert_array_equal(
        from_nwb.values, seen.sel(unit=ids).values if "unit" in seen.coords else seen.values[:, :, ids]
    )
    # the features of the recording read back equal those of the recording written
    np.testing.assert_allclose(
        FeatureExtractor().transform([from_npz]).values, FeatureExtractor().transform([seen]).values
    )
