"""The batch pipeline without Ray: configs, the resume scan, features in the store, dry runs.

The Ray runs themselves (local Ray, a two-node loopback cluster, killed drivers and workers)
are in tests/test_pipeline_ray.py (slow tier).
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from tests.test_store_records import make_shard

from pipelines.config import ConfigError, load_config
from pipelines.estimate import estimate, format_estimate
from rulefinder.store import ZooStore
from rulefinder.store.features import complete_features, feature_keys, read_features, write_features

REPO = Path(__file__).resolve().parents[1]


def memory_url() -> str:
    return f"memory://pipeline/{uuid.uuid4().hex}.zarr"


def test_complete_shards_is_the_resume_rule_a_half_written_shard_is_not_done():
    url = memory_url()
    store = ZooStore.create(url)
    store.write_shard(make_shard("a", 3), "a")

    def die(i, network_id):
        if i == 0:
            raise RuntimeError("writer killed")

    with pytest.raises(RuntimeError):
        store.write_shard(make_shard("b", 3), "b", on_network=die, write_batch=1)
    # Another handle on the same store sees shards written after it was opened.
    other = ZooStore.open(url)
    store.write_shard(make_shard("c", 2), "c")
    assert other.complete_shards() == {"a", "c"}


def test_local_run_resume_uses_the_store_scan(tmp_path):
    """``python -m training_zoo run --resume`` skips exactly the shards the scan calls complete."""
    from training_zoo import local_run

    spec = {
        "name": "t", "rules": ["backprop", "feedback_alignment"], "variants": "default",
        "optimizers": ["sgd"], "tasks": ["digits"],
        "architectures": [{"family": "mlp", "depth": [1], "width": [8]}], "networks_per_shard": 1,
        "hyperparameters": {"epochs": [0.05, 0.05], "batch_size": [128]},
        "recording": {"checkpoints": 3, "units_per_layer": 4, "probes": 8},
    }
    url = str(tmp_path / "z.zarr")
    first = local_run.run_zoo(spec, url, max_shards=1, progress=False)
    assert first["run"] == 1
    again = local_run.run_zoo(spec, url, resume=True, progress=False)
    assert (again["skipped"], again["run"]) == (1, 1)
    assert len(ZooStore.open(url).complete_shards()) == 2


def _rows(n_rec: int, shard: str) -> xr.DataArray:
    rng = np.random.default_rng(0)
    rec = np.repeat(np.arange(n_rec), 2)
    return xr.DataArray(
        rng.normal(size=(2 * n_rec, 5)),
        dims=("sample", "feature"),
        coords={
            "feature": [f"f{i}" for i in range(5)],
            "recording": ("sample", rec),
            "network": ("sample", np.array([f"{shard}/{r}" for r in rec])),
            "virtual": ("sample", np.array(["", '{"seed": 1}'] * n_rec)),
            "area": ("sample", np.array(["layer1", "output"] * n_rec)),
            "rule": ("sample", np.full(2 * n_rec, "backprop")),
            "learned": ("sample", np.ones(2 * n_rec, bool)),
        },
    )


def test_features_in_the_store_resume_by_fingerprint_and_renumber_recordings(tmp_path):
    url = str(tmp_path / "f.zarr")
    ZooStore.create(url)
    write_features(url, "s1", _rows(3, "s1"), fingerprint="A")
    write_features(url, "s2", _rows(2, "s2"), fingerprint="B")
    assert complete_features(url) == {"s1", "s2"}
    assert complete_features(url, "A") == {"s1"}
    back = read_features(url)
    assert back.dims == ("sample", "feature") and back.sizes["sample"] == 10
    assert back.dtype == np.float32
    assert sorted(set(back.coords["recording"].values.tolist())) == list(range(5))
    assert back.coords["network"].values[-1] == "s2/1"
    assert back.coords["learned"].dtype == bool
    np.testing.assert_allclose(back.isel(sample=slice(0, 6)).values, _rows(3, "s1").values.astype(np.float32))
    # The store stays a zoo store its readers open.
    assert ZooStore.open(url).shard_ids() == []


def test_a_features_group_without_its_flag_is_not_complete(tmp_path):
    import zarr

    url = str(tmp_path / "f.zarr")
    ZooStore.create(url)
    write_features(url, "s1", _rows(2, "s1"), fingerprint="A")
    group = zarr.open_group(url, path="features/s1", mode="r+", use_consolidated=False)
    group.attrs.update({"complete": False})  # what a writer killed before the flag leaves
    assert complete_features(url, "A") == set()


def test_feature_groups_never_read_the_root_metadata(tmp_path):
    """A trained zoo's root zarr.json holds every shard's consolidated metadata (20 MB for
    1,296 networks); parsing it per feature group made the features stage 5x slower."""
    url = str(tmp_path / "f.zarr")
    ZooStore.create(url)
    assert complete_features(url) == set() and feature_keys(url) == []
    root_json = tmp_path / "f.zarr" / "zarr.json"
    kept = root_json.read_bytes()
    root_json.write_text("{not json")  # any read of the root would fail
    write_features(url, "s1", _rows(2, "s1"), fingerprint="A")
    assert complete_features(url, "A") == {"s1"} and feature_keys(url) == ["s1"]
    assert read_features(url).sizes["sample"] == 4
    root_json.write_bytes(kept)
    assert ZooStore.open(url).shard_ids() == []


def test_features_tasks_of_one_stage_reuse_the_opened_store(tmp_path, monkeypatch):
    from pipelines import tasks

    url = str(tmp_path / "z.zarr")
    store = ZooStore.create(url)
    for k in ("a", "b"):
        store.write_shard(make_shard(k, 2), k)
    store.consolidate()
    opened = []
    real_open = ZooStore.open.__func__

    def counting_open(cls, *args, **kwargs):
        opened.append(args[0])
        return real_open(cls, *args, **kwargs)

    monkeypatch.setattr(ZooStore, "open", classmethod(counting_open))
    monkeypatch.setattr(tasks, "_OPEN_STORE", {})
    settings = {"virtual": [{"seed": 0, "steps": [{"op": "gaussian_noise", "snr": 2.0}]}]}
    first = tasks.features_batch(["a"], url, settings, "fp", session="one")
    second = tasks.features_batch(["b"], url, settings, "fp", session="one")
    assert len(opened) == 1
    assert [r["recordings"] for r in first + second] == [4, 4]
    tasks.features_batch(["a"], url, settings, "fp", session="two")  # a new stage opens afresh
    assert len(opened) == 2
    assert complete_features(url, "fp") == {"a", "b"}


def test_write_features_names_what_is_wrong(tmp_path):
    url = str(tmp_path / "f.zarr")
    with pytest.raises(ValueError, match="dims"):
        write_features(url, "x", _rows(1, "x").T, fingerprint="A")
    with pytest.raises(ValueError, match="network"):
        write_features(url, "x", _rows(1, "x").drop_vars("network"), fingerprint="A")


def test_shipped_configs_load_and_meet_their_sizes():
    from training_zoo.rules.registry import all_rules
    from training_zoo.spec import expand_spec

    rules = set(all_rules())
    smoke = expand_spec(load_config("smoke").zoo_spec())
    assert {s.rule for s in smoke} == rules
    default = expand_spec(load_config("default").zoo_spec())
    assert sum(s.n_networks for s in default) >= 1056
    assert {s.rule for s in default} == rules
    assert {s.arch["family"] for s in default} == {"mlp", "resmlp", "cnn"}
    assert len({s.task for s in default}) >= 3
    for rule, cls in all_rules().items():  # every rule and every variant
        assert {s.variant for s in default if s.rule == rule} == set(cls.variants), rule
    large = expand_spec(load_config("large").zoo_spec())
    assert sum(s.n_networks for s in large) >= 20000


def test_config_errors_name_the_file_and_field(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ntrain: {zoo: smoke, max_retries: -1}\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*train\.max_retries"):
        load_config(bad)
    bad.write_text("name: x\ntrain: {zoo: smoke}\nfeatures: {virtual: [{op: poisson}]}\n")
    with pytest.raises(ConfigError, match=r"features\.virtual"):
        load_config(bad)
    bad.write_text("name: x\ntrain: {zoo: smoke, typo: 1}\n")
    with pytest.raises(ConfigError, match=r"train\.typo"):
        load_config(bad)
    with pytest.raises(ConfigError, match="shipped: .*smoke"):
        load_config("no-such-config")
    with pytest.raises(ConfigError, match="train.zoo"):
        load_config({"name": "x", "train": {"zoo": "no-such-zoo"}}).zoo_spec()


def test_model_name_is_config_and_short_hash_and_follows_the_config():
    a = load_config("smoke")
    assert a.model_name().startswith("smoke-") and len(a.model_name()) == len("smoke-") + 8
    changed = load_config({**a.model_dump(mode="json"), "fit": {"params": {"classifier": "hgb"}}})
    assert changed.model_name() != a.model_name()
    assert a.fingerprint("features") != changed.fingerprint("features")  # rows follow the estimator


def test_estimates_scale_with_the_cluster():
    cfg = load_config("large")
    one = estimate(cfg, {"cpus": 2, "gpus": 0, "nodes": 1})
    many = estimate(cfg, {"cpus": 64, "gpus": 0, "nodes": 4})
    gpus = estimate(cfg, {"cpus": 64, "gpus": 8, "nodes": 2})
    assert one.networks >= 20000
    # the driver-side fit and evaluation and the longest shard do not shrink with the cluster
    assert many.wall_s < one.wall_s / 5 and gpus.wall_s < many.wall_s
    assert "nothing was run" in format_estimate(cfg, one)


def test_smoke_and_default_are_sized_for_their_targets_on_two_cores():
    two_cores = {"cpus": 2, "gpus": 0, "nodes": 1}
    assert estimate(load_config("smoke"), two_cores).wall_s < 3 * 60
    assert estimate(load_config("default"), two_cores).wall_s < 60 * 60


def test_dry_run_cli_prints_the_estimate_and_runs_nothing(tmp_path):
    name = "large"  # the other configs' estimates are checked in-process above
    out = subprocess.run(
        [sys.executable, "-m", "rulefinder", "pipeline", "run", name, "--dry-run", "--json",
         "--out", str(tmp_path / "o")],
        capture_output=True, text=True, cwd=REPO, timeout=120, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["config"] == name and doc["networks"] > 0 and doc["shards"] > 0 and doc["wall_s"] > 0
    assert not (tmp_path / "o").exists()


def test_the_packaged_default_is_never_a_run_name(tmp_path, monkeypatch):
    from pipelines.run import Pipeline, PipelineError

    monkeypatch.setenv("RULEFINDER_DATA_DIR", str(tmp_path))
    with pytest.raises(PipelineError, match="packaged"):
        Pipeline("smoke", name="default", out=tmp_path / "o").run()
    assert not (tmp_path / "o").exists()


def test_shards_are_submitted_round_robin_over_rules():
    from types import SimpleNamespace

    from pipelines.run import interleave_rules

    shards = [SimpleNamespace(rule=r, shard_id=f"{r}{i}") for r in ("a", "b", "c") for i in range(3 if r != "b" else 1)]
    order = [s.shard_id for s in interleave_rules(shards)]
    assert order == ["a0", "b0", "c0", "a1", "c1", "a2", "c2"]
