"""Every bad upload gets a 4xx with a clear ``detail``, and nothing is stored.

RECORDING_FORMAT.md's error paths (corrupt files, pickled .npz, zip members escaping the store,
zip bombs, NaN/inf, wrong dims, wrong content types, empty and oversized uploads) and damaged
copies of the shipped examples (tests/mutations.py), through the real upload path.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from rulefinder.settings import Settings, get_settings
from tests.api_fixtures import npz_bytes, raw_npz, synthetic_recording

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
GOOD = synthetic_recording(0, 3)
RESP = GOOD.transpose("session", "stimulus", "unit").values


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("svc")
    settings = Settings(data_dir=data_dir, max_upload_bytes=2_000_000, max_unpacked_bytes=8_000_000, rate_limit_per_minute=1e6, worker_pool="threads")
    with TestClient(create_app(settings)) as c:
        yield c, data_dir


def _nothing_stored(client, data_dir: Path) -> None:
    assert client.get("/v1/recordings").json()["recordings"] == []
    assert not [p for p in (data_dir / "service" / "blobs").rglob("*") if p.is_file()]
    assert not list((data_dir / "service" / "incoming").iterdir())


def _zip(members: dict[str, bytes], compression=zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _zarr_zip(extra: dict[str, bytes]) -> bytes:
    src = zipfile.ZipFile(EXAMPLES / "mlp_backprop.zarr.zip")
    members = {i.filename: src.read(i) for i in src.infolist() if not i.is_dir()}
    members.update(extra)
    return _zip(members, zipfile.ZIP_STORED)


def _bomb_npz() -> bytes:
    # 48 MB of zeros deflate to ~50 KB; the service (max_unpacked_bytes 8 MB here) refuses it
    # from the zip headers, before inflating anything.
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        with zf.open("responses.npy", "w") as f:
            header = io.BytesIO()
            np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False, "shape": (3, 2, 1_000_000)})
            f.write(header.getvalue())
            f.write(b"\0" * (48_000_000))
    return buf.getvalue()


def _pickled_npz() -> bytes:
    buf = io.BytesIO()
    np.savez(buf, responses=RESP, unit_area=np.array([{"evil": 1}] * RESP.shape[2], dtype=object))
    return buf.getvalue()


nan_unit = RESP.copy()
nan_unit[:, :, 0] = np.nan
inf_resp = RESP.copy()
inf_resp[1, 1, 1] = np.inf

BAD_FILES = {
    "empty file": (b"", 422, "empty"),
    "text file": (b"session,stimulus,unit\n1,2,3\n", 415, "unrecognised content"),
    "pickle": (pickle.dumps({"responses": [1, 2, 3]}), 415, "unrecognised content"),
    "corrupt npz": (npz_bytes()[:200], 422, "a.npz"),
    "pickled npz": (_pickled_npz(), 422, "object array"),
    "npz without responses": (raw_npz(session_time=np.arange(3.0)), 422, "responses"),
    "wrong dims": (raw_npz(responses=RESP[0]), 422, "expected 3 dimensions"),
    "NaN unit": (raw_npz(responses=nan_unit), 422, "NaN"),
    "inf": (raw_npz(responses=inf_resp), 422, "inf"),
    "too few sessions": (raw_npz(responses=RESP[:2]), 422, "session"),
    "zip of other things": (_zip({"readme.txt": b"hello"}), 415, "neither"),
    "zip escaping the store": (_zarr_zip({"../escape.txt": b"x"}), 422, ".."),
    "zip with absolute path": (_zarr_zip({"/etc/evil": b"x"}), 422, "absolute"),
    "zip bomb npz": (_bomb_npz(), 413, "unpacks"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_file_is_4xx_and_nothing_stored(service, case):
    client, data_dir = service
    content, status, needle = BAD_FILES[case]
    r = client.post("/v1/recordings", files=[("files", ("a.npz", content, "application/octet-stream"))])
    assert r.status_code == status, r.text
    detail = r.json()["detail"]
    assert isinstance(detail, str) and needle.lower() in detail.lower(), detail
    _nothing_stored(client, data_dir)


def test_bad_requests_are_4xx(service):
    client, data_dir = service
    good = npz_bytes()
    cases = [
        (dict(content=b"{}", headers={"content-type": "application/json"}), 415),
        (dict(content=b"x"), 415),  # no content type
        (dict(content=b"garbage", headers={"content-type": "multipart/form-data"}), 400),  # no boundary
        (dict(content=b"--xx\r\nnonsense", headers={"content-type": "multipart/form-data; boundary=xx"}), 422),
        (dict(data={"noise": "moderate"}, files=[("other", ("a.txt", b"x", "text/plain"))]), 422),
        (dict(files=[("files", ("a.npz", good, "application/octet-stream"))], data={"noise": "loud"}), 422),
        (dict(files=[("files", ("a.npz", good, "application/octet-stream"))], data={"area_order": "V1,V1"}), 422),
        (dict(files=[("files", ("a.npz", good, "application/octet-stream"))], data={"area_order": "V1,V9"}), 422),
        (dict(files=[("files", ("a.npz", good, "x")), ("files", ("b.npz", good, "x"))]), 422),
        (dict(files=[("files", ("a.npz", good, "x"))], data={"colour": "red"}), 422),
    ]
    for kwargs, status in cases:
        r = client.post("/v1/recordings", **kwargs)
        assert r.status_code == status, (kwargs.get("data"), r.text)
        assert isinstance(r.json()["detail"], str)
    # no file part at all
    r = client.post("/v1/recordings", files=[("noise", (None, "moderate"))])
    assert r.status_code == 422 and "no file" in r.json()["detail"]
    _nothing_stored(client, data_dir)


def test_oversized_upload_413_streamed_and_declared(service):
    client, data_dir = service
    big = raw_npz(responses=np.random.default_rng(0).normal(size=(10, 50, 600)))  # ~2.4 MB
    r = client.post("/v1/recordings", files=[("files", ("big.npz", big, "application/octet-stream"))])
    assert r.status_code == 413 and "RULEFINDER_MAX_UPLOAD_BYTES" in r.json()["detail"]

    def chunks():  # no Content-Length: the limit is enforced while streaming
        body = b"--b\r\nContent-Disposition: form-data; name=\"files\"; filename=\"big.npz\"\r\n\r\n"
        yield body
        for i in range(0, len(big), 65536):
            yield big[i : i + 65536]
        yield b"\r\n--b--\r\n"

    r = client.post("/v1/recordings", content=chunks(), headers={"content-type": "multipart/form-data; boundary=b"})
    assert r.status_code == 413, r.text
    _nothing_stored(client, data_dir)


def test_nwb_upload_and_damaged_nwb(service):
    client, data_dir = service
    files = sorted((EXAMPLES / "ophys_mouse").glob("*.nwb"))
    parts = [("files", (p.name, p.read_bytes(), "application/x-hdf5")) for p in files]
    r = client.post("/v1/recordings", files=parts, data={"area_order": "V1,LM"} if False else {})
    assert r.status_code == 201, r.text
    rec = r.json()
    assert rec["format"] == "nwb" and rec["summary"]["sessions"] == len(files) and len(rec["files"]) == len(files)
    assert client.delete(f"/v1/recordings/{rec['id']}").status_code == 204
    # one truncated session file: 4xx naming the file, nothing stored
    broken = list(parts)
    name, data, ctype = broken[2][1]
    broken[2] = ("files", (name, data[: len(data) // 2], ctype))
    r = client.post("/v1/recordings", files=broken)
    assert 400 <= r.status_code < 500 and name in r.json()["detail"], r.text
    # NWB and NPZ together
    r = client.post("/v1/recordings", files=parts[:2] + [("files", ("a.npz", npz_bytes(), "x"))])
    assert r.status_code == 422
    _nothing_stored(client, data_dir)


@pytest.mark.parametrize("example", ["mlp_backprop.npz", "mlp_backprop.zarr.zip"])
def test_damaged_examples_get_4xx_with_loader_message(service, example):
    # h13's mutation helpers (issue #13) land with the loaders' fixes for damaged files.
    damaged_copies = pytest.importorskip("tests.mutations", reason="tests/mutations.py (issue #13) not present").damaged_copies
    client, data_dir = service
    data = (EXAMPLES / example).read_bytes()
    statuses = []
    for kind, blob, mutation in damaged_copies(data, n=12, seed=11, is_zip=True):
        r = client.post("/v1/recordings", files=[("files", (example, blob, "application/octet-stream"))])
        assert r.status_code in (201, 413, 415, 422), (mutation, r.status_code, r.text)
        statuses.append(r.status_code)
        if r.status_code == 201:  # damage that still loads and validates (e.g. a flipped float bit)
            client.delete(f"/v1/recordings/{r.json()['id']}")
        else:
            assert isinstance(r.json()["detail"], str) and r.json()["detail"], mutation
        _nothing_stored(client, data_dir)
    assert any(s != 201 for s in statuses)


def test_zarr_zip_and_settings_cache_untouched(service):
    client, data_dir = service
    r = client.post("/v1/recordings", files=[("files", ("x.bin", (EXAMPLES / "mlp_backprop.zarr.zip").read_bytes(), "x"))])
    assert r.status_code == 201 and r.json()["format"] == "zarr", r.text
    assert client.delete(f"/v1/recordings/{r.json()['id']}").status_code == 204
    assert get_settings().max_unpacked_bytes > 0
