"""The REST service end to end in-process: uploads, listing, deleting, predictions, auth, rate
limit, retention and job state across restarts. A tiny model fitted in the test answers."""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient

from api.app import create_app, expire_old
from api.storage import Storage
from rulefinder.classify.result import PredictionResult
from rulefinder.settings import Settings, effective_auth
from tests.api_fixtures import data_dir_with_model, npz_bytes, synthetic_recording


def _settings(tmp_path, **kw) -> Settings:
    # A worker process costs seconds of CPU to start (imports, the model): the tests about the
    # process pool (here the restart, the rest in test_api_workers.py) ask for one.
    kw.setdefault("worker_pool", "threads")
    return Settings(data_dir=data_dir_with_model(tmp_path), **kw)


def _upload(c, content=None, name="a.npz", headers=None, **fields):
    content = npz_bytes() if content is None else content
    return c.post("/v1/recordings", files=[("files", (name, content, "application/octet-stream"))], data=fields, headers=headers or {})


def _wait(c, pid, headers=None, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = c.get(f"/v1/predictions/{pid}", headers=headers or {}).json()
        if job["status"] in ("succeeded", "failed"):
            return job
        time.sleep(0.05)
    raise AssertionError(f"prediction {pid} did not finish: {job}")


@pytest.fixture()
def client(tmp_path):
    with TestClient(create_app(_settings(tmp_path))) as c:
        yield c


def _blobs(data_dir):
    return sorted(p for p in (data_dir / "service" / "blobs").rglob("*") if p.is_file())


def test_upload_predict_list_delete(client, tmp_path):
    r = _upload(client, noise="high", area_order="V1,V2")
    assert r.status_code == 201, r.text
    rec = r.json()
    assert rec["format"] == "npz" and rec["noise"] == "high" and rec["area_order"] == ["V1", "V2"]
    assert rec["summary"]["sessions"] == 6 and rec["summary"]["units"] == 24
    assert [x["id"] for x in client.get("/v1/recordings").json()["recordings"]] == [rec["id"]]

    p = client.post("/v1/predictions", json={"recording_ids": [rec["id"]]})
    assert p.status_code == 202 and p.json()["status"] in ("queued", "running", "succeeded")
    job = _wait(client, p.json()["id"])
    assert job["status"] == "succeeded", job
    result = PredictionResult.model_validate(job["result"])
    assert result.noise == "high" and result.model.name == "default" and len(result.model.sha256) == 64
    assert abs(sum(result.rule_probabilities.values()) - 1) < 1e-6
    assert {a.area for a in result.per_area} >= {"V1", "V2"} or len(result.per_area) == 2
    assert result.expected_accuracy is not None

    assert client.delete(f"/v1/recordings/{rec['id']}").status_code == 204
    assert client.get(f"/v1/predictions/{p.json()['id']}").status_code == 404
    assert client.get("/v1/recordings").json()["recordings"] == []
    assert _blobs(tmp_path) == []
    assert client.delete(f"/v1/recordings/{rec['id']}").status_code == 404


def test_group_prediction_combines_recordings(client):
    ids = [_upload(client, npz_bytes(synthetic_recording(1, s)), name=f"m{s}.npz").json()["id"] for s in (1, 2)]
    job = _wait(client, client.post("/v1/predictions", json={"recording_ids": ids}).json()["id"])
    assert job["status"] == "succeeded", job
    assert job["result"]["n_recordings"] == 2
    assert client.post("/v1/predictions", json={"recording_ids": ids + ["rec_nope"]}).status_code == 404
    assert client.post("/v1/predictions", json={"recording_ids": ids, "model": "nope"}).status_code == 404
    assert client.post("/v1/predictions", json={"recording_ids": []}).status_code == 422


def test_content_addressed_dedup_and_id_covers_fields(client, tmp_path):
    data = npz_bytes()
    a = _upload(client, data, name="a.npz").json()
    b = _upload(client, data, name="renamed.bin").json()  # format from content, not the name
    c = _upload(client, data, noise="none").json()
    assert a["id"] == b["id"] and a["id"] != c["id"]
    assert a["files"][0]["sha256"] == c["files"][0]["sha256"]
    assert len(_blobs(tmp_path)) == 1  # one copy of the bytes per owner
    client.delete(f"/v1/recordings/{a['id']}")
    assert len(_blobs(tmp_path)) == 1  # still used by c
    client.delete(f"/v1/recordings/{c['id']}")
    assert _blobs(tmp_path) == []


def test_catalogue_models_health_and_page(client):
    assert client.get("/healthz").json()["auth"] == "off"
    rules = client.get("/v1/rules").json()
    assert {r["id"] for r in rules} == {"backprop", "feedback_alignment", "hebbian"}
    assert all(r["family"] and r["reference"] for r in rules)
    assert client.get("/v1/rules", params={"model": "nope"}).status_code == 404
    models = client.get("/v1/models").json()["models"]
    assert [m["name"] for m in models] == ["default"] and len(models[0]["sha256"]) == 64
    page = client.get("/")
    assert page.status_code == 200 and "rulefinder" in page.text
    assert client.get("/web/app.js").status_code == 200


def test_auth_keys_isolation_and_revocation(tmp_path):
    settings = _settings(tmp_path, auth="required")
    store = Storage(settings.data_dir)
    k1, k2 = store.create_key("alice"), store.create_key("bob")
    assert store.list_keys()[0].name == "alice"
    raw = (settings.data_dir / "service" / "service.sqlite3").read_bytes()
    assert k1.encode() not in raw  # stored hashed
    h1, h2 = {"Authorization": f"Bearer {k1}"}, {"Authorization": f"Bearer {k2}"}
    with TestClient(create_app(settings)) as c:
        assert c.get("/v1/recordings").status_code == 401
        assert c.get("/v1/recordings", headers={"Authorization": "Bearer rf_wrong"}).status_code == 401
        rid = _upload(c, headers=h1).json()["id"]
        pid = c.post("/v1/predictions", json={"recording_ids": [rid]}, headers=h1).json()["id"]
        assert c.get("/v1/recordings", headers=h2).json()["recordings"] == []
        assert c.get(f"/v1/recordings/{rid}", headers=h2).status_code == 404
        assert c.delete(f"/v1/recordings/{rid}", headers=h2).status_code == 404
        assert c.get(f"/v1/predictions/{pid}", headers=h2).status_code == 404
        assert c.post("/v1/predictions", json={"recording_ids": [rid]}, headers=h2).status_code == 404
        # the same bytes from bob: his own copy and id
        rid2 = _upload(c, headers=h2).json()["id"]
        assert rid2 != rid
        assert _wait(c, pid, headers=h1)["status"] == "succeeded"
        store.revoke_key("alice")
        assert c.get("/v1/recordings", headers=h1).status_code == 401


def test_rate_limit_429_with_retry_after(tmp_path):
    with TestClient(create_app(_settings(tmp_path, rate_limit_per_minute=60))) as c:
        codes = [c.get("/v1/recordings") for _ in range(12)]
        limited = [r for r in codes if r.status_code == 429]
        assert limited and int(limited[0].headers["Retry-After"]) >= 1
        assert "rate limit" in limited[0].json()["detail"]
        assert c.get("/healthz").status_code == 200  # liveness is not rate limited


def test_auth_off_only_on_loopback():
    assert effective_auth(Settings(host="127.0.0.1")) == "off"
    assert effective_auth(Settings(host="::1")) == "off"
    assert effective_auth(Settings(host="0.0.0.0")) == "required"
    with pytest.raises(ValueError, match="loopback"):
        effective_auth(Settings(host="0.0.0.0", auth="off"))
    with pytest.raises(ValueError, match="loopback"):
        create_app(Settings(host="10.1.2.3", auth="off"))


def test_jobs_survive_restart(tmp_path):
    settings = _settings(tmp_path, worker_pool="processes", workers=1)
    with TestClient(create_app(settings)) as c:
        rid = _upload(c).json()["id"]
        done = c.post("/v1/predictions", json={"recording_ids": [rid]}).json()["id"]
        finished = _wait(c, done, timeout=600)  # a worker process starts first
    # A server that stopped with one job queued and one running (state written as it would be).
    store = Storage(settings.data_dir)
    queued = store.add_job("local", [rid], "default").id
    running = store.add_job("local", [rid], "default").id
    assert store.start_job(running)
    with TestClient(create_app(settings)) as c:
        for pid in (queued, running):
            job = _wait(c, pid, timeout=600)
            assert job["status"] == "succeeded", job
        assert c.get(f"/v1/predictions/{done}").json() == finished  # finished results stay
    assert store.get_job(running).attempts == 2


def test_retention_expires_old_uploads(tmp_path):
    settings = _settings(tmp_path, retention_days=1)
    with TestClient(create_app(settings)) as c:
        rid = _upload(c).json()["id"]
        store = c.app.state.storage
        assert expire_old(store, 1, now=time.time() + 0.5 * 86400) == 0
        assert expire_old(store, 1, now=time.time() + 2 * 86400) == 1
        assert c.get(f"/v1/recordings/{rid}").status_code == 404
        assert _blobs(tmp_path) == []


def test_keys_cli(tmp_path, monkeypatch):
    import json

    from typer.testing import CliRunner

    from rulefinder.cli import app

    monkeypatch.setenv("RULEFINDER_DATA_DIR", str(tmp_path))
    run = CliRunner().invoke
    out = run(app, ["keys", "create", "lab1", "--json"])
    assert out.exit_code == 0, out.output
    created = json.loads(out.stdout)
    assert created["name"] == "lab1" and created["key"].startswith("rf_")
    assert Storage(tmp_path).owner_of_key(created["key"]) is not None
    assert run(app, ["keys", "create", "lab1"]).exit_code == 2
    listed = json.loads(run(app, ["keys", "list", "--json"]).stdout)
    assert [k["name"] for k in listed] == ["lab1"] and "key" not in listed[0]
    assert run(app, ["keys", "revoke", "lab1"]).exit_code == 0
    assert Storage(tmp_path).owner_of_key(created["key"]) is None
    assert run(app, ["keys", "revoke", "lab1"]).exit_code == 2
    bad = run(app, ["serve", "--host", "0.0.0.0"], env={"RULEFINDER_AUTH": "off", "RULEFINDER_DATA_DIR": str(tmp_path)})
    assert bad.exit_code == 2 and "loopback" in bad.output


@pytest.mark.slow
def test_serving_never_imports_torch_or_training_zoo(tmp_path):
    import os
    import subprocess
    import sys
    import textwrap
    from pathlib import Path

    data_dir_with_model(tmp_path)
    # sitecustomize runs in every Python process started with this PYTHONPATH: the server and
    # its prediction worker processes. Each leaves its pid, so the test sees that both had the block.
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(textwrap.dedent(
        """
        import os, sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("torch", "training_zoo", "ray", "pipelines"):
                    raise ImportError(f"{name} is blocked: serving must not import it")
        sys.meta_path.insert(0, Block())
        open(os.path.join(os.environ["BLOCKED_PIDS"], str(os.getpid())), "w").close()
        """
    ))
    script = textwrap.dedent(
        """
        import sys, time
        from pathlib import Path
        from fastapi.testclient import TestClient
        from api.app import create_app
        from rulefinder.settings import Settings
        with TestClient(create_app(Settings(data_dir=Path(sys.argv[1]), workers=1))) as c:
            assert c.get("/v1/rules").status_code == 200
            with open("examples/mlp_backprop.npz", "rb") as f:
                rid = c.post("/v1/recordings", files=[("files", ("a.npz", f.read(), "x"))]).json()["id"]
            pid = c.post("/v1/predictions", json={"recording_ids": [rid]}).json()["id"]
            for _ in range(20):
                job = c.get(f"/v1/predictions/{pid}", params={"wait": 30}).json()
                if job["status"] in ("succeeded", "failed"):
                    break
            assert job["status"] == "succeeded", job
            workers = c.app.state.jobs.processes.pids()
        assert "torch" not in sys.modules and "training_zoo" not in sys.modules
        print("ok", *workers)
        """
    )
    repo = Path(__file__).resolve().parents[1]
    pids = tmp_path / "pids"
    pids.mkdir()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(hooks), str(repo)]), BLOCKED_PIDS=str(pids))
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path)], cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0 and out.stdout.split()[0] == "ok", out.stderr[-3000:]
    workers = out.stdout.split()[1:]
    assert workers and set(workers) <= {p.name for p in pids.iterdir()}  # the worker ran with the block


def test_storage_reads_never_wait_for_a_writer_and_threaded_writers_all_land(tmp_path):
    import threading

    store = Storage(tmp_path)
    jid = store.add_job("local", ["rec_x"], "default").id
    inside, release = threading.Event(), threading.Event()

    def long_write():
        with store._write() as conn:
            conn.execute("UPDATE jobs SET updated = updated + 1 WHERE id = ?", (jid,))
            inside.set()
            release.wait(10)

    writer = threading.Thread(target=long_write)
    writer.start()
    try:
        assert inside.wait(10)
        t0 = time.monotonic()
        # The event loop reads while a worker is mid-transaction: WAL snapshot, no lock wait.
        assert store.get_job(jid).status == "queued" and store.job_status(jid) == "queued"
        assert time.monotonic() - t0 < 1.0
    finally:
        release.set()
        writer.join()

    def add_jobs(n):
        for _ in range(n):
            store.start_job(store.add_job("local", ["rec_x"], "default").id)

    threads = [threading.Thread(target=add_jobs, args=(25,)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(store.requeue_unfinished()) == 1 + 8 * 25
