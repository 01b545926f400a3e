"""The Python client (and ``rulefinder predict --server``) against a real uvicorn server."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from api.storage import Storage
from rulefinder.classify.result import PredictionResult
from rulefinder.client import ApiError, AuthError, Client, ConnectionFailed, NotFound
from rulefinder.settings import Settings
from tests.api_fixtures import LiveServer, data_dir_with_model

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data_dir = data_dir_with_model(tmp_path_factory.mktemp("client"))
    with LiveServer(Settings(data_dir=data_dir, rate_limit_per_minute=1e6)) as s:
        yield s


def test_predict_files_one_result_per_recording_or_grouped(server):
    with Client(server.url) as c:
        paths = [EXAMPLES / "mlp_backprop.npz", EXAMPLES / "mlp_backprop.zarr.zip"]
        results = c.predict_files(paths, noise="none")
        assert len(results) == 2 and all(isinstance(r, PredictionResult) for r in results)
        assert all(r.noise == "none" and r.n_recordings == 1 for r in results)
        [grouped] = c.predict_files(paths, group=True)
        assert grouped.n_recordings == 2
        assert c.health()["status"] == "ok"
        assert {r["id"] for r in c.rules()} == {"backprop", "feedback_alignment", "hebbian"}
        assert c.models()[0]["name"] == "default"


def test_nwb_is_reduced_on_the_client(server):
    with Client(server.url) as c:
        reduced = c.upload(EXAMPLES / "ophys_mouse", area_order=None)
        assert reduced.format == "npz" and reduced.files[0]["name"] == "ophys_mouse.npz"
        raw = c.upload(sorted((EXAMPLES / "ophys_mouse").glob("*.nwb")), reduce_nwb=False)
        assert raw.format == "nwb" and len(raw.files) == len(list((EXAMPLES / "ophys_mouse").glob("*.nwb")))
        assert reduced.summary.units == raw.summary.units and reduced.summary.sessions == raw.summary.sessions
        assert sum(f["size"] for f in reduced.files) < sum(f["size"] for f in raw.files)
        ids = {r.id for r in c.list_recordings()}
        assert {reduced.id, raw.id} <= ids
        c.delete(raw.id)
        with pytest.raises(NotFound):
            c.delete(raw.id)


def test_clear_errors(server, tmp_path):
    bogus = tmp_path / "notes.npz"
    bogus.write_text("not a recording")
    with Client(server.url) as c:
        with pytest.raises(ApiError) as exc:
            c.upload(bogus)
        assert exc.value.status == 415 and "notes.npz" in str(exc.value.detail)
        with pytest.raises(NotFound):
            c.job("pred_000")
        with pytest.raises(NotFound, match="model 'nope' not found"):
            c.predict(c.upload(EXAMPLES / "mlp_backprop.npz").id, model="nope")
    with Client("http://127.0.0.1:9", max_retries=0) as c:  # nothing listens on the discard port
        with pytest.raises(ConnectionFailed, match="cannot reach"):
            c.health()


def test_retries_429_with_backoff_and_auth(tmp_path):
    data_dir = data_dir_with_model(tmp_path)
    key = Storage(data_dir).create_key("lab")
    # 120/min: bursts of 12, then one request every 0.5 s; the server says Retry-After: 1
    with LiveServer(Settings(data_dir=data_dir, auth="required", rate_limit_per_minute=120)) as s:
        with Client(s.url, api_key="rf_wrong") as c:
            with pytest.raises(AuthError):
                c.list_recordings()
        with Client(s.url, api_key=key) as c:
            t0 = time.monotonic()
            for _ in range(16):
                assert c.list_recordings() == []
            assert time.monotonic() - t0 >= 0.9  # it had to wait for the bucket at least once
        with Client(s.url, api_key=key, max_retries=0) as c:
            with pytest.raises(ApiError) as exc:
                for _ in range(30):
                    c.list_recordings()
            assert exc.value.status == 429


def test_cli_predict_through_server(server, monkeypatch):
    from typer.testing import CliRunner

    from rulefinder.cli import app

    monkeypatch.delenv("RULEFINDER_API_KEY", raising=False)
    out = CliRunner().invoke(app, ["predict", str(EXAMPLES / "mlp_backprop.npz"), str(EXAMPLES / "ephys_units"), "--server", server.url, "--json"])
    assert out.exit_code == 0, out.output
    results = [PredictionResult.model_validate(r) for r in json.loads(out.stdout)]
    assert len(results) == 2
    bad = CliRunner().invoke(app, ["predict", str(EXAMPLES / "mlp_backprop.npz"), "--server", "http://127.0.0.1:9"])
    assert bad.exit_code == 2 and "cannot reach" in bad.output
