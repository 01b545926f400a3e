"""The pipeline with its store on object storage: a real S3 server on loopback (slow tier).

``moto_server`` (from ``moto[server]``, in the ``test`` extra) is a real HTTP S3 endpoint in
its own process; the store goes through s3fs, zarr's ``FsspecStore`` and real Ray workers,
with the credentials and endpoint passed as ``storage_options`` (docs/cluster.md).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow

s3fs = pytest.importorskip("s3fs", reason="the test extra installs s3fs")
boto3 = pytest.importorskip("boto3", reason="the test extra installs moto[server], which brings boto3")

MOTO_SERVER = str(Path(sys.executable).parent / "moto_server")
BUCKET = "rulefinder-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """``storage_options`` for a bucket on a moto S3 server started for this module."""
    if not os.path.exists(MOTO_SERVER):
        pytest.skip("moto_server is not installed (pip install 'moto[server]')")
    port = _free_port()
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "wb")
    server = subprocess.Popen([MOTO_SERVER, "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=log)
    endpoint = f"http://127.0.0.1:{port}"
    creds = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing", "region_name": "us-east-1"}
    try:
        client = boto3.client("s3", endpoint_url=endpoint, **creds)
        deadline = time.time() + 60
        while True:
            try:
                client.create_bucket(Bucket=BUCKET)
                break
            except Exception:  # the server is still starting
                if time.time() > deadline or server.poll() is not None:
                    raise
                time.sleep(0.2)
        yield {"key": "testing", "secret": "testing", "endpoint_url": endpoint,
               "client_kwargs": {"region_name": "us-east-1"}}
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


def _config() -> dict:
    """Three one-network shards (three rules), a virtual experiment in the features stage."""
    return {
        "name": "s3",
        "train": {
            "zoo": "smoke", "max_retries": 1,
            "overrides": {
                "rules": ["backprop", "feedback_alignment", "hebbian"], "variants": "default",
                "optimizers": ["sgd"], "tasks": ["digits"],
                "architectures": [{"family": "mlp", "depth": [1], "width": [16]}],
                "networks_per_shard": 1,
                "hyperparameters": {"epochs": [0.2, 0.2], "batch_size": [64]},
                "recording": {"checkpoints": 4, "units_per_layer": 8, "probes": 16},
            },
        },
        "features": {"virtual": [{"seed": 0, "steps": [{"op": "keep_units", "n": 4, "per_area": True}]}]},
        "evaluate": {"enabled": False}, "register": {"enabled": False},
    }


def test_pipeline_store_on_s3_writes_reads_back_and_resumes(s3, tmp_path, monkeypatch):
    from pipelines.config import load_config
    from pipelines.run import Pipeline
    from rulefinder.store import ZooStore
    from rulefinder.store.features import complete_features, read_features
    from training_zoo.spec import expand_spec

    monkeypatch.setenv("RULEFINDER_DATA_DIR", str(tmp_path / "data"))
    cfg = load_config(_config())
    shards = [s.shard_id for s in expand_spec(cfg.zoo_spec())]
    assert len(shards) == 3
    url = f"s3://{BUCKET}/zoo.zarr"

    def run(resume: bool) -> dict:
        return Pipeline(cfg, store=url, storage_options=s3, out=tmp_path / "out", resume=resume,
                        num_cpus=2, until="features", progress=False).run()

    first = run(resume=False)
    assert first["failed"] == {}
    assert first["stages"]["train"]["shards_run"] == 3 and first["stages"]["features"]["shards_run"] == 3

    fs = s3fs.S3FileSystem(**s3)
    assert fs.exists(f"{BUCKET}/zoo.zarr/zarr.json")  # the objects are on the server, not local
    store = ZooStore.open(url, storage_options=s3)
    assert store.is_consolidated and store.complete_shards() == set(shards)
    ids = store.select()
    assert len(ids) == 3 and store.recording(ids[0]).sizes["session"] == 4
    rows = read_features(url, storage_options=s3)
    assert set(rows.coords["network"].values.tolist()) == set(ids)
    assert np.isfinite(rows.values).any()

    # A run that died while training one shard: its shard group (and so its features) never
    # finished. The consolidated root still lists the shard; its flags are gone.
    lost = shards[1]
    fs.rm(f"{BUCKET}/zoo.zarr/shards/{lost}/complete", recursive=True)
    fs.rm(f"{BUCKET}/zoo.zarr/features/{lost}", recursive=True)
    fs.invalidate_cache()
    assert ZooStore.open(url, storage_options=s3).complete_shards() == set(shards) - {lost}

    second = run(resume=True)
    assert second["failed"] == {}
    train, feats = second["stages"]["train"], second["stages"]["features"]
    assert (train["shards_run"], train["shards_skipped"]) == (1, 2)
    assert (feats["shards_run"], feats["shards_skipped"]) == (1, 2)
    final = ZooStore.open(url, storage_options=s3)
    assert final.complete_shards() == set(shards) and final.incomplete() == []
    assert sorted(final.select()) == sorted(ids)  # nothing lost, nothing duplicated
    assert complete_features(url, storage_options=s3) == set(shards)
    back = read_features(url, storage_options=s3)
    assert back.sizes["sample"] == rows.sizes["sample"]
