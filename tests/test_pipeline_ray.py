"""The pipeline on real Ray (slow tier): a local Ray, and a two-node cluster on loopback.

Every run goes through the CLI in a subprocess (the driver is a separate process, as on a
cluster, and can be killed). Ray start-up is slow on 2 shared cores, so the cluster is started
once per module and every cluster test shares it; teardown always runs ``ray stop --force``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from rulefinder.store import ZooStore

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).parent / "ray")
RULEFINDER = [sys.executable, "-m", "rulefinder"]


def _env(tmp: Path) -> dict:
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    # Token auth on every process (head, second node, driver): a node joining without it is
    # refused by a head that enabled it on its own.
    env.update({"RULEFINDER_DATA_DIR": str(tmp / "data"), "OMP_NUM_THREADS": "1",
                "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(REPO), "RAY_AUTH_MODE": "token"})
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pipeline(args: list[str], tmp: Path, timeout: float = 600) -> tuple[subprocess.CompletedProcess, dict | None]:
    out = subprocess.run([*RULEFINDER, "pipeline", "run", *args, "--json"], capture_output=True, text=True,
                         cwd=tmp, env=_env(tmp), timeout=timeout)
    try:
        summary = json.loads(out.stdout)
    except json.JSONDecodeError:
        summary = None
    return out, summary


def _train_config(tmp: Path, name: str, *, rules: list[str], epochs: float, nets: int = 2,
                  rule_kwargs: dict | None = None, max_retries: int = 2) -> Path:
    """A train-only config: a few shards of one optimizer, each a few seconds long."""
    cfg = {
        "name": name,
        "train": {
            "zoo": "smoke", "max_retries": max_retries,
            "overrides": {
                "rules": rules, "variants": "default", "optimizers": ["sgd"], "tasks": ["digits"],
                "architectures": [{"family": "mlp", "depth": [1], "width": [16]}],
                "shards_per_cell": 3, "networks_per_shard": nets,
                "hyperparameters": {"epochs": [epochs, epochs], "batch_size": [32]},
                "recording": {"checkpoints": 4, "units_per_layer": 4, "probes": 8},
                "rule_kwargs": rule_kwargs or {},
            },
        },
        "evaluate": {"enabled": False}, "register": {"enabled": False},
    }
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _check_smoke_summary(summary: dict, tmp: Path) -> None:
    from pipelines.config import load_config
    from rulefinder.classify.registry import ModelRegistry
    from training_zoo.spec import expand_spec

    shards = expand_spec(load_config("smoke").zoo_spec())
    assert summary["failed"] == {}
    for name in ("train", "features", "fit", "evaluate", "register"):
        assert summary["stages"][name]["status"] == "done", (name, summary["stages"][name])
    store = ZooStore.open(summary["store"])
    assert store.complete_shards() == {s.shard_id for s in shards}
    assert len(store.select(include_diverged=True)) == sum(s.n_networks for s in shards)
    registry = ModelRegistry(data_dir=tmp / "data" / "models")
    loaded = registry.load(summary["model"])
    assert loaded.card.zoo.n_networks > 0 and loaded.card.metrics
    assert set(loaded.estimator.classes_["rule"]) <= {s.rule for s in shards}
    assert (Path(summary["out"]) / "summary.json").exists()


def test_smoke_pipeline_end_to_end_on_a_local_ray(tmp_path):
    out, summary = _pipeline(["smoke", "--out", str(tmp_path / "run")], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert summary["cluster"]["local"] and summary["cluster"]["nodes"] == 1
    _check_smoke_summary(summary, tmp_path)
    # A second run of the same config under the same name is refused before any work ...
    again, _ = _pipeline(["smoke", "--out", str(tmp_path / "run2")], tmp_path, timeout=120)
    assert again.returncode != 0 and "--replace" in again.stderr
    assert not (tmp_path / "run2").exists()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A head and a worker node, one CPU each, on 127.0.0.1."""
    tmp = tmp_path_factory.mktemp("ray")
    port = _free_port()
    env = _env(tmp)
    common = ["--num-cpus=1", "--node-ip-address=127.0.0.1", "--disable-usage-stats",
              f"--object-store-memory={100 * 1024**2}"]
    try:
        for extra in (["--head", f"--port={port}", "--include-dashboard=false"], [f"--address=127.0.0.1:{port}"]):
            started = subprocess.run([RAY, "start", *extra, *common], env=env, capture_output=True, text=True,
                                     timeout=300)
            assert started.returncode == 0, started.stderr[-3000:]
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([RAY, "stop", "--force"], env=env, capture_output=True, timeout=120)


def test_smoke_pipeline_on_a_two_node_cluster_uses_both_nodes(cluster, tmp_path):
    out, summary = _pipeline(["smoke", "--address", cluster, "--out", str(tmp_path / "run")], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert summary["cluster"]["nodes"] == 2 and not summary["cluster"]["local"]
    assert len(summary["shards_per_node"]) == 2, summary["shards_per_node"]
    _check_smoke_summary(summary, tmp_path)


def _shard_stamps(url: str, shard_ids) -> dict[str, float]:
    """When each shard's ``complete`` flags were last written (retraining rewrites them)."""
    return {s: os.stat(Path(url) / "shards" / s / "complete" / "zarr.json").st_mtime_ns for s in shard_ids}


def test_driver_killed_mid_run_then_resume_loses_and_repeats_nothing(cluster, tmp_path):
    cfg = _train_config(tmp_path, "killdriver", rules=["backprop", "feedback_alignment"], epochs=3.0)
    store = str(tmp_path / "store.zarr")
    args = [*RULEFINDER, "pipeline", "run", str(cfg), "--address", cluster, "--store", store,
            "--out", str(tmp_path / "run"), "--until", "features"]
    driver = subprocess.Popen(args, cwd=tmp_path, env=_env(tmp_path), stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.time() + 300
    done: set[str] = set()
    try:
        while time.time() < deadline and driver.poll() is None:
            if Path(store, "zarr.json").exists():
                done = ZooStore.open(store).complete_shards()
                if len(done) >= 2:
                    break
            time.sleep(0.5)
    finally:
        os.killpg(driver.pid, signal.SIGKILL)  # the driver and nothing else: the cluster lives on
        driver.wait()
    assert 2 <= len(done) < 6, f"driver finished before it could be killed ({done})"
    done = ZooStore.open(store).complete_shards()
    stamps = _shard_stamps(store, done)

    out, summary = _pipeline([str(cfg), "--address", cluster, "--store", store, "--out", str(tmp_path / "run"),
                              "--resume", "--until", "features"], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    train = summary["stages"]["train"]
    assert train["shards_skipped"] == len(done) and train["shards_run"] == 6 - len(done)
    final = ZooStore.open(store)
    assert len(final.complete_shards()) == 6
    ids = final.networks()["network"].values
    assert len(ids) == 12 and len(set(ids.tolist())) == 12 and final.incomplete() == []
    assert _shard_stamps(store, done) == stamps  # no completed shard was trained again
    assert summary["stages"]["features"]["shards"] == 6


def _worker_running(task: str) -> int | None:
    import psutil

    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if cmd.startswith(f"ray::{task}"):
            return proc.info["pid"]
    return None


def test_a_killed_worker_is_retried_and_a_shard_that_always_fails_is_reported(cluster, tmp_path):
    # feedback_alignment gets a keyword its constructor rejects: it fails on every try.
    cfg = _train_config(tmp_path, "killworker", rules=["backprop", "feedback_alignment"], epochs=3.0,
                        rule_kwargs={"feedback_alignment": {"no_such_argument": 1}}, max_retries=2)
    store = str(tmp_path / "store.zarr")
    args = [*RULEFINDER, "pipeline", "run", str(cfg), "--address", cluster, "--store", store,
            "--out", str(tmp_path / "run"), "--until", "train", "--json"]
    driver = subprocess.Popen(args, cwd=tmp_path, env=_env(tmp_path), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    killed = None
    deadline = time.time() + 300
    while killed is None and time.time() < deadline and driver.poll() is None:
        pid = _worker_running("_train_task")
        if pid is not None:
            time.sleep(1.0)  # mid-task: training has started ...
            if _worker_running("_train_task") == pid:  # ... and is still running
                try:
                    os.kill(pid, signal.SIGKILL)
                    killed = pid
                except ProcessLookupError:
                    pass
        time.sleep(0.2)
    stdout, stderr = driver.communicate(timeout=600)
    assert killed is not None, "no training worker was seen to kill"
    summary = json.loads(stdout)
    assert driver.returncode == 1  # a shard failed for good
    bad = {f"feedback_alignment.default.sgd.digits.a0.r{i}" for i in range(3)}
    assert set(summary["failed"]) == bad
    assert "no_such_argument" in " ".join(summary["failed"].values())
    assert ZooStore.open(store).complete_shards() == {f"backprop.default.sgd.digits.a0.r{i}" for i in range(3)}
    assert summary["stages"]["train"]["shards_run"] == 3
    assert np.isclose(summary["stages"]["train"]["networks_trained"], 6)
    assert shutil.which(RAY)
