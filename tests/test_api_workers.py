"""Predictions in worker processes (RULEFINDER_WORKER_POOL=processes, the default): a round trip
through a worker, a worker killed mid-job fails only that job, a worker that cannot start fails
its job clearly, and the worker gets the server's effective settings."""

from __future__ import annotations

import os
import sys
import time

import pytest
from fastapi.testclient import TestClient

import api.workers
from api.app import create_app
from api.workers import worker_env
from rulefinder.settings import Settings
from tests.api_fixtures import data_dir_with_model, npz_bytes

# A worker that kills itself (SIGKILL, as the kernel's OOM killer would) in its first prediction
# while the marker file exists, removing the marker: the replacement worker predicts normally.
CRASHING_WORKER = """
import os, signal, sys
import api.jobs, api.workers
marker, real = sys.argv[1], api.jobs.predict_loaded
def predict_loaded(*args, **kwargs):
    if os.path.exists(marker):
        os.unlink(marker)
        os.kill(os.getpid(), signal.SIGKILL)
    return real(*args, **kwargs)
api.jobs.predict_loaded = predict_loaded
api.workers.main()
"""


def _predict(c, rid: str) -> dict:
    pid = c.post("/v1/predictions", json={"recording_ids": [rid]}).json()["id"]
    deadline = time.monotonic() + 600  # the first job waits for the worker's start-up (slow on a loaded machine)
    while time.monotonic() < deadline:
        job = c.get(f"/v1/predictions/{pid}", params={"wait": 30}).json()
        if job["status"] in ("succeeded", "failed"):
            return job
    raise AssertionError(f"prediction {pid} did not end: {job}")


def test_crashed_worker_fails_its_job_clearly_and_the_next_job_succeeds(tmp_path, monkeypatch):
    marker = tmp_path / "crash-once"
    marker.touch()
    monkeypatch.setattr(api.workers, "command", lambda: [sys.executable, "-c", CRASHING_WORKER, str(marker)])
    settings = Settings(data_dir=data_dir_with_model(tmp_path / "data"), workers=1, worker_pool="processes")
    with TestClient(create_app(settings)) as c:
        jobs = c.app.state.jobs
        [first_worker] = jobs.processes.pids()
        assert first_worker != os.getpid()
        rid = c.post("/v1/recordings", files=[("files", ("a.npz", npz_bytes(), "x"))]).json()["id"]

        crashed = _predict(c, rid)
        assert crashed["status"] == "failed"
        assert "prediction worker process killed by SIGKILL while predicting" in crashed["error"]
        assert "worker was replaced" in crashed["error"]
        assert not marker.exists()

        ok = _predict(c, rid)
        assert ok["status"] == "succeeded", ok
        [second_worker] = jobs.processes.pids()
        assert second_worker != first_worker
        assert c.get("/healthz").status_code == 200

        # The worker's answer is what this process predicts from the same stored bytes.
        assert ok["result"] == jobs.predict(c.app.state.storage.get_job(ok["id"]))
    assert not any(_alive(p) for p in (first_worker, second_worker))  # the pool stopped with the app


def test_worker_that_cannot_start_fails_its_job(tmp_path, monkeypatch):
    monkeypatch.setattr(api.workers, "command", lambda: [sys.executable, "-c", "import sys; sys.exit(3)"])
    settings = Settings(data_dir=data_dir_with_model(tmp_path), workers=1, worker_pool="processes")
    with TestClient(create_app(settings)) as c:
        rid = c.post("/v1/recordings", files=[("files", ("a.npz", npz_bytes(), "x"))]).json()["id"]
        job = _predict(c, rid)
        assert job["status"] == "failed"
        assert "prediction worker process exited with status 3 before it was ready" in job["error"]


def test_worker_env_carries_the_effective_settings(tmp_path, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    settings = Settings(data_dir=tmp_path / "data", max_unpacked_bytes=123, workers=3, auth="off", nwb_read_timeout_s=7.5)
    env = worker_env(settings)
    assert env["RULEFINDER_DATA_DIR"] == str(tmp_path / "data") and env["OMP_NUM_THREADS"] == "1"
    for key, value in env.items():  # the worker reads them back into the same settings
        if key.startswith("RULEFINDER_"):
            monkeypatch.setenv(key, value)
    assert Settings() == settings
    with pytest.raises(ValueError):
        Settings(worker_pool="fork")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is a dead child nobody waited for: also a failure to stop cleanly
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(")")[-1].split()[0] != "Z"
