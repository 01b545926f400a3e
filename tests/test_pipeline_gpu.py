"""The pipeline's GPU path (marked ``gpu``; skipped without CUDA): a shard trains on CUDA, and
a local Ray that sees the GPU gives training tasks a fraction of it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
]

REPO = Path(__file__).resolve().parents[1]
SHARD = {
    "name": "gpu", "rules": ["backprop", "equilibrium_propagation"], "variants": "default",
    "optimizers": ["sgd"], "tasks": ["mnist5k_14"],
    "architectures": [{"family": "mlp", "depth": [2], "width": [256]}], "networks_per_shard": 32,
    "hyperparameters": {"epochs": [1, 1], "batch_size": [64]},
    "recording": {"checkpoints": 11, "units_per_layer": 64, "probes": 64},
}


def test_a_shard_trains_on_cuda_and_is_stored(tmp_path):
    from pipelines.tasks import train_shard
    from rulefinder.store import ZooStore
    from training_zoo.spec import expand_spec

    url = str(tmp_path / "z.zarr")
    ZooStore.create(url)
    timings = {}
    for shard in expand_spec(SHARD):
        t0 = time.perf_counter()
        res = train_shard(shard.to_dict(), url, device="cuda", threads=1)
        timings[shard.rule] = time.perf_counter() - t0
        assert res["device"] == "cuda" and res["networks"] == 32
    store = ZooStore.open(url)
    assert len(store.complete_shards()) == 2
    print({"device": torch.cuda.get_device_name(0), "networks_per_s": {k: 32 / v for k, v in timings.items()}})


def test_local_ray_gives_training_tasks_a_gpu(tmp_path):
    import yaml

    cfg = {"name": "gpu", "train": {"zoo": SHARD, "gpus_per_task": 0.5},
           "evaluate": {"enabled": False}, "register": {"enabled": False}}
    path = tmp_path / "gpu.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "RULEFINDER_DATA_DIR": str(tmp_path / "data")}
    env.pop("RAY_ADDRESS", None)
    out = subprocess.run([sys.executable, "-m", "rulefinder", "pipeline", "run", str(path), "--out",
                          str(tmp_path / "run"), "--until", "train", "--json"],
                         capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    import json

    summary = json.loads(out.stdout)
    assert summary["cluster"]["gpus"] >= 1
    assert summary["stages"]["train"]["device"] == "cuda"
