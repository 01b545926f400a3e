"""Stored and deflated ``.npz`` members are read (and inflated by libdeflate) in one call
(``archive.read_member``): the same arrays as :mod:`zipfile`'s stream, and every damage that
stream names is named too."""

from __future__ import annotations

import numpy as np
import pytest

from rulefinder.recording import RecordingError, load_npz, make_recording, save_npz
from rulefinder.recording import archive

REC = make_recording(
    np.random.default_rng(3).normal(size=(5, 6, 8)), unit_area=np.repeat(["a", "b"], 4), area_order=["a", "b"]
)


@pytest.fixture(params=["libdeflate", "zlib stream"])
def path_kind(request, monkeypatch):
    if request.param == "zlib stream":
        monkeypatch.setattr(archive, "_libdeflate", None)
    else:
        assert archive._libdeflate is not None, "deflate (libdeflate) is a core dependency"
    return request.param


@pytest.fixture(params=["deflated", "stored"])
def stored(request) -> bool:
    return request.param == "stored"


@pytest.fixture
def saved(tmp_path, stored):
    def save() -> tuple:
        p = tmp_path / "r.npz"
        if stored:  # np.savez: members stored, as the service's load test uploads them
            from rulefinder.recording.npz import recording_to_npz_arrays

            np.savez(p, **recording_to_npz_arrays(REC))
        else:
            save_npz(REC, p)
        return p, bytearray(p.read_bytes())

    return save


def _patch_u32(raw: bytearray, name: bytes, local_offset: int, central_offset: int, value: int) -> None:
    """Set a 4-byte field of member ``name`` in its local header and its central-directory entry."""
    for marker, offset in ((b"PK\x03\x04", local_offset), (b"PK\x01\x02", central_offset)):
        at = raw.find(marker)
        while raw[at + (30 if marker == b"PK\x03\x04" else 46):].find(name) != 0:
            at = raw.find(marker, at + 1)
        raw[at + offset : at + offset + 4] = value.to_bytes(4, "little")


def _field(raw: bytearray, name: bytes, offset: int) -> int:
    at = raw.find(b"PK\x01\x02")
    while raw[at + 46 :].find(name) != 0:
        at = raw.find(b"PK\x01\x02", at + 1)
    return int.from_bytes(raw[at + offset : at + offset + 4], "little")


def _error(p) -> str:
    with pytest.raises(RecordingError) as info:
        load_npz(p)
    return str(info.value)


def test_both_paths_read_the_same_recording(tmp_path, path_kind, saved):
    p, _ = saved()
    back = load_npz(p)
    np.testing.assert_array_equal(back.values, REC.values)
    assert back.attrs["area_order"] == ["a", "b"]


def test_a_wrong_crc_is_named(tmp_path, path_kind, saved):
    p, raw = saved()
    crc = _field(raw, b"responses.npy", 16)
    _patch_u32(raw, b"responses.npy", 14, 16, crc ^ 1)
    p.write_bytes(bytes(raw))
    message = _error(p)
    assert "damaged archive" in message and "'responses.npy'" in message and "bad CRC-32" in message, message


def test_a_member_shorter_than_declared_is_judged_by_its_crc(tmp_path, path_kind, saved):
    p, raw = saved()
    size = _field(raw, b"responses.npy", 24)
    _patch_u32(raw, b"responses.npy", 22, 24, size + 8)
    p.write_bytes(bytes(raw))
    np.testing.assert_array_equal(load_npz(p).values, REC.values)  # as zipfile's stream does


def test_a_member_longer_than_declared_stops_at_the_declared_size(tmp_path, path_kind, saved):
    p, raw = saved()
    _patch_u32(raw, b"responses.npy", 22, 24, 100)
    p.write_bytes(bytes(raw))
    message = _error(p)  # zipfile: the CRC of the first 100 bytes fails; libdeflate: no room
    assert "damaged archive" in message and "'responses.npy'" in message, message
