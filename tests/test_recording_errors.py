"""One test per error path of RECORDING_FORMAT.md: each message names the file, the field,
what was expected and what was found."""

from __future__ import annotations

import os
import stat
import zipfile
from datetime import datetime, timedelta, timezone

import h5py
import numpy as np
import pytest

from rulefinder.recording import (
    RecordingError,
    RecordingWarning,
    load_npz,
    load_nwb,
    load_recording,
    load_recording_with_warnings,
    load_zarr_zip,
    make_recording,
    save_zarr_zip,
    write_nwb_sessions,
)
from rulefinder.settings import get_settings
from tests.nwb_fixtures import nwb_file

GOOD = np.random.default_rng(0).normal(size=(4, 3, 5))


def _npz(tmp_path, name="r.npz", **arrays):
    path = tmp_path / name
    np.savez(path, **arrays)
    return path


def _expect(path_or_call, *fragments, loader=load_npz):
    with pytest.raises(RecordingError) as info:
        path_or_call() if callable(path_or_call) else loader(path_or_call)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, message
    return message


# ---- the array contract (NPZ carries every field, so its errors cover make_recording) ----


def test_responses_with_two_dimensions(tmp_path):
    p = _npz(tmp_path, responses=np.zeros((21, 64)))
    _expect(p, str(p), "responses has shape (21, 64): expected 3 dimensions (session, stimulus, unit)")


@pytest.mark.parametrize(
    "shape, axis", [((2, 3, 4), "session"), ((3, 1, 4), "stimulus"), ((3, 2, 0), "unit")]
)
def test_too_few_sessions_stimuli_or_units(tmp_path, shape, axis):
    p = _npz(tmp_path, responses=np.ones(shape))
    _expect(p, str(p), "responses has shape", f"along {axis}, found {shape[('session', 'stimulus', 'unit').index(axis)]}")


def test_infinite_values(tmp_path):
    bad = GOOD.copy()
    bad[1, 2, 3] = np.inf
    _expect(_npz(tmp_path, responses=bad), "responses contains +-inf", "(1, 2, 3)", "expected finite")


def test_unit_nan_in_every_session(tmp_path):
    bad = GOOD.copy()
    bad[:, :, 2] = np.nan
    _expect(_npz(tmp_path, responses=bad), "unit 2 is NaN in every session")


def test_session_nan_for_every_unit(tmp_path):
    bad = GOOD.copy()
    bad[3] = np.nan
    _expect(_npz(tmp_path, responses=bad), "session 3 is NaN for every unit")


def test_non_numeric_responses(tmp_path):
    _expect(_npz(tmp_path, responses=np.full((3, 2, 2), "x")), "responses has dtype <U1", "expected a float")


def test_missing_responses_key(tmp_path):
    _expect(_npz(tmp_path, session_time=np.arange(3.0)), "missing key 'responses'", "session_time")


def test_object_array_is_never_unpickled(tmp_path):
    p = tmp_path / "evil.npz"
    np.savez(p, responses=GOOD, unit_area=np.array([object()] * 5, dtype=object))
    _expect(p, "unit_area is an object array", "never unpickled")


def test_not_an_npz_file(tmp_path):
    p = tmp_path / "junk.npz"
    p.write_bytes(b"definitely not a zip")
    _expect(p, str(p), "cannot be read as a NumPy .npz archive")


def test_session_time_wrong_length(tmp_path):
    _expect(_npz(tmp_path, responses=GOOD, session_time=np.arange(3.0)), "session_time has shape (3,): expected (4,)")


def test_session_time_not_increasing(tmp_path):
    _expect(
        _npz(tmp_path, responses=GOOD, session_time=np.array([0.0, 1.0, 1.0, 2.0])),
        "session_time is not strictly increasing",
        "session 2",
    )


def test_unit_area_wrong_length(tmp_path):
    _expect(_npz(tmp_path, responses=GOOD, unit_area=np.array(["V1"] * 4)), "unit_area has length 4: expected 5")


def test_unit_area_not_strings(tmp_path):
    _expect(_npz(tmp_path, responses=GOOD, unit_area=np.arange(5)), "unit_area has dtype int64", "expected unicode")


def test_area_order_lacks_an_area(tmp_path):
    areas = np.array(["V1", "V1", "LM", "LM", "AL"])
    _expect(
        _npz(tmp_path, responses=GOOD, unit_area=areas, area_order=np.array(["V1", "LM"])),
        "area_order ['V1', 'LM'] lacks area(s) ['AL']",
    )


def test_area_order_repeats_a_name(tmp_path):
    areas = np.array(["V1"] * 5)
    _expect(_npz(tmp_path, responses=GOOD, unit_area=areas, area_order=np.array(["V1", "V1"])), "area_order has repeated names")


def test_stimulus_id_wrong_length(tmp_path):
    _expect(_npz(tmp_path, responses=GOOD, stimulus_id=np.arange(4)), "stimulus_id has shape (4,): expected (3,)")


def test_stimulus_id_repeated(tmp_path):
    _expect(_npz(tmp_path, responses=GOOD, stimulus_id=np.array([1, 1, 2])), "stimulus_id has repeated values")


def test_performance_outside_unit_interval(tmp_path):
    _expect(
        _npz(tmp_path, responses=GOOD, performance=np.array([0.1, 0.5, 1.5, 0.9])),
        "performance has value 1.5: expected values in [0, 1]",
    )


def test_performance_wrong_shape(tmp_path):
    _expect(_npz(tmp_path, responses=GOOD, performance=np.array([0.1, 0.5])), "performance has shape (2,): expected (4,)")


def test_unknown_key_is_ignored_with_a_warning(tmp_path):
    p = _npz(tmp_path, responses=GOOD, notes=np.array(["hello"]))
    with pytest.warns(RecordingWarning, match="unknown key 'notes' ignored"):
        rec = load_npz(p)
    assert rec.shape == GOOD.shape


def test_constant_unit_is_legal():
    values = GOOD.copy()
    values[:, :, 0] = 0.0
    assert make_recording(values).shape == GOOD.shape


def test_unknown_extension(tmp_path):
    p = tmp_path / "data.mat"
    p.write_bytes(b"x")
    _expect(lambda: load_recording(p), str(p), "unknown extension", ".npz, .zarr.zip or .nwb")


# ---- zipped Zarr ----


def _zip_with(tmp_path, members: dict[str, bytes], name="bad.zarr.zip", link: str | None = None):
    p = tmp_path / name
    with zipfile.ZipFile(p, "w") as zf:
        for member, data in members.items():
            zf.writestr(member, data)
        if link is not None:
            info = zipfile.ZipInfo(link)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, "/etc/passwd")
    return p


def test_zip_member_with_absolute_path(tmp_path):
    p = _zip_with(tmp_path, {"/etc/evil": b"x"})
    _expect(p, str(p), "'/etc/evil' has an absolute path", loader=load_zarr_zip)


def test_zip_member_climbing_out(tmp_path):
    p = _zip_with(tmp_path, {"store/../../evil": b"x"})
    _expect(p, "climbs out with '..'", loader=load_zarr_zip)
    assert not (tmp_path.parent / "evil").exists()


def test_zip_member_that_is_a_link(tmp_path):
    p = _zip_with(tmp_path, {"zarr.json": b"{}"}, link="responses")
    _expect(p, "'responses' is a link", loader=load_zarr_zip)


def test_zip_bomb_is_stopped(tmp_path, monkeypatch):
    p = tmp_path / "bomb.zarr.zip"
    with zipfile.ZipFile(p, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("zarr.json", b"0" * 5_000_000)
    assert p.stat().st_size < 50_000
    monkeypatch.setenv("RULEFINDER_MAX_UNPACKED_BYTES", "1000000")
    get_settings.cache_clear()
    try:
        _expect(p, "unpacks to 5000000 bytes: expected at most 1000000", loader=load_zarr_zip)
    finally:
        get_settings.cache_clear()


def test_zip_bomb_with_lying_headers_is_stopped(tmp_path, monkeypatch):
    """The declared sizes are patched to claim 10 bytes: unpacking stops at the declared size
    (the CRC then fails) or at the streaming byte count, never writes 3 MB."""
    p = tmp_path / "liar.zarr.zip"
    payload = b"0" * 3_000_000
    with zipfile.ZipFile(p, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("zarr.json", payload)
    raw = bytearray(p.read_bytes())
    size = len(payload).to_bytes(4, "little")
    for marker in (b"PK\x03\x04", b"PK\x01\x02"):
        start = raw.find(marker)
        offset = 22 if marker == b"PK\x03\x04" else 24
        assert raw[start + offset : start + offset + 4] == size
        raw[start + offset : start + offset + 4] = (10).to_bytes(4, "little")
    p.write_bytes(bytes(raw))
    monkeypatch.setenv("RULEFINDER_MAX_UNPACKED_BYTES", "1000000")
    get_settings.cache_clear()
    try:
        with pytest.raises(RecordingError) as info:
            load_zarr_zip(p)
        message = str(info.value)
        assert "more than 1000000 bytes" in message or "'zarr.json' is corrupt" in message
    finally:
        get_settings.cache_clear()


def test_zip_without_a_zarr_store(tmp_path):
    _expect(_zip_with(tmp_path, {"readme.txt": b"hi"}), "zip holds no Zarr store", loader=load_zarr_zip)


def test_zarr_without_responses(tmp_path):
    rec = make_recording(GOOD)
    p = save_zarr_zip(rec.rename("activity"), tmp_path / "r.zarr.zip")
    # save_zarr_zip always names the variable "responses": rename inside a fresh store instead
    import tempfile

    import xarray as xr

    with tempfile.TemporaryDirectory() as tmp:
        store = os.path.join(tmp, "s.zarr")
        xr.Dataset({"activity": rec.drop_vars("unit_area")}).to_zarr(store, zarr_format=2)
        with zipfile.ZipFile(p, "w") as zf:
            for root, _, files in os.walk(store):
                for f in files:
                    full = os.path.join(root, f)
                    zf.write(full, os.path.relpath(full, store))
    _expect(p, "missing variable 'responses'", "activity", loader=load_zarr_zip)


def test_zarr_responses_with_wrong_dims(tmp_path):
    import tempfile

    import xarray as xr

    p = tmp_path / "dims.zarr.zip"
    with tempfile.TemporaryDirectory() as tmp:
        store = os.path.join(tmp, "s.zarr")
        xr.Dataset({"responses": (("time", "neuron"), np.zeros((4, 3)))}).to_zarr(store, zarr_format=3, consolidated=False)
        with zipfile.ZipFile(p, "w") as zf:
            for root, _, files in os.walk(store):
                for f in files:
                    full = os.path.join(root, f)
                    zf.write(full, os.path.relpath(full, store))
    _expect(p, "responses has dims ('time', 'neuron'): expected ('session', 'stimulus', 'unit')", loader=load_zarr_zip)


def test_not_a_zip(tmp_path):
    p = tmp_path / "plain.zarr.zip"
    p.write_text("nope")
    _expect(p, "cannot be read as a zip archive", loader=load_zarr_zip)


# ---- NWB ----

T0 = datetime(2026, 3, 1, tzinfo=timezone.utc)


def _sessions(tmp_path, n=3, sub="a", **kwargs):
    rec = make_recording(np.random.default_rng(1).normal(size=(n, 3, 4)), unit_area=np.array(["V1"] * 4))
    return write_nwb_sessions(rec, tmp_path / sub, **kwargs)


def test_hdf5_file_that_is_not_nwb(tmp_path):
    p = tmp_path / "plain.nwb"
    with h5py.File(p, "w") as f:
        f["data"] = np.arange(3)
    _expect(lambda: load_nwb([p]), str(p), "is an HDF5 file but not NWB", "nwb_version")


def test_file_that_is_not_hdf5(tmp_path):
    p = tmp_path / "text.nwb"
    p.write_text("hello")
    _expect(lambda: load_nwb([p]), str(p), "is not an HDF5 file")


def test_equal_session_start_times(tmp_path):
    a = _sessions(tmp_path, sub="a", start=T0)
    b = _sessions(tmp_path, sub="b", start=T0)
    _expect(
        lambda: load_nwb([a[0], b[0], a[1]]),
        "have the same session_start_time",
        str(a[0]),
        str(b[0]),
        "order would be a guess",
    )


def test_global_id_in_some_files_only(tmp_path):
    a = _sessions(tmp_path, sub="a", start=T0, global_id=True)
    b = _sessions(tmp_path, sub="b", start=T0 + timedelta(days=30), global_id=False)
    _expect(lambda: load_nwb([*a[:2], b[0]]), "global_id is present in", "but missing in", str(b[0]))


def test_global_id_repeated_within_a_file(tmp_path):
    rec = make_recording(
        np.random.default_rng(2).normal(size=(3, 3, 3)),
        unit_area=np.array(["V1"] * 3),
        unit=np.array([7, 7, 8]),
    )
    paths = write_nwb_sessions(rec, tmp_path)
    _expect(lambda: load_nwb(paths), str(paths[0]), "global_id", "repeats value 7")


def test_unit_counts_differ_without_global_id(tmp_path):
    a = _sessions(tmp_path, sub="a", start=T0, global_id=False)
    rec = make_recording(np.random.default_rng(1).normal(size=(3, 3, 6)), unit_area=np.array(["V1"] * 6))
    b = write_nwb_sessions(rec, tmp_path / "b", start=T0 + timedelta(days=30), global_id=False)
    _expect(lambda: load_nwb([*a[:2], b[0]]), "has 4 units but", "has 6", "row order")


def test_missing_trials_table(tmp_path):
    p = nwb_file(tmp_path / "s.nwb", trials=False, ophys=np.ones((3, 2)))
    _expect(lambda: load_nwb([p]), str(p), "has no trials table")


def test_trials_without_stimulus_id(tmp_path):
    p = nwb_file(tmp_path / "s.nwb", stimulus_column=False, ophys=np.ones((3, 2)))
    _expect(lambda: load_nwb([p]), str(p), "trials table has no stimulus_id column")


def test_file_without_signal(tmp_path):
    p = nwb_file(tmp_path / "s.nwb")
    _expect(lambda: load_nwb([p]), str(p), "has no signal", "DfOverF or Fluorescence", "units table")


def test_imaging_plus_units_uses_imaging_and_warns(tmp_path):
    paths = []
    for s in range(3):
        paths.append(
            nwb_file(
                tmp_path / f"s{s}.nwb",
                start=T0 + timedelta(days=s),
                ophys=np.full((3, 2), float(s)),
                units=[[0.5], [2.5]],
            )
        )
    rec, notes = load_recording_with_warnings(paths)
    assert rec.coords["unit_area"].values.tolist() == ["V1", "V1"]  # from the imaging plane
    np.testing.assert_array_equal(rec.values[:, 0, 0], [0.0, 1.0, 2.0])
    assert any("both imaging and a units table" in n and "imaging" in n for n in notes)


def test_sessions_mixing_imaging_and_units(tmp_path):
    a = nwb_file(tmp_path / "a.nwb", start=T0, ophys=np.ones((3, 2)))
    b = nwb_file(tmp_path / "b.nwb", start=T0 + timedelta(days=1), units=[[0.5], [2.5]])
    c = nwb_file(tmp_path / "c.nwb", start=T0 + timedelta(days=2), ophys=np.ones((3, 2)))
    _expect(lambda: load_nwb([a, b, c]), "sessions mix imaging and spike units")


def test_units_area_from_electrode_group_then_all(tmp_path):
    with_group = [
        nwb_file(tmp_path / f"g{s}.nwb", start=T0 + timedelta(days=s), units=[[0.5, 0.6], [4.5]], electrode_location="CA1")
        for s in range(3)
    ]
    rec = load_nwb(with_group)
    assert rec.coords["unit_area"].values.tolist() == ["CA1", "CA1"]
    np.testing.assert_array_equal(rec.values[0, :, 0], [2.0, 0.0, 0.0])  # two spikes in a 1-s trial
    plain = [nwb_file(tmp_path / f"p{s}.nwb", start=T0 + timedelta(days=s), units=[[0.5], [2.5]]) for s in range(3)]
    assert load_nwb(plain).coords["unit_area"].values.tolist() == ["all", "all"]


def test_fewer_than_three_sessions(tmp_path):
    paths = _sessions(tmp_path)[:2]
    _expect(lambda: load_nwb(paths), "expected at least 3 along session, found 2")


def test_performance_out_of_range_in_trials(tmp_path):
    rec = make_recording(
        np.random.default_rng(3).normal(size=(3, 2, 2)), performance=np.array([0.2, 0.5, 0.7])
    )
    paths = write_nwb_sessions(rec, tmp_path)
    from pynwb import NWBHDF5IO

    # rewrite one file's performance column with an impossible score
    with h5py.File(paths[1], "a") as f:
        f["intervals/trials/performance"][0] = 3.0
    _expect(lambda: load_nwb(paths), str(paths[1]), "trials.performance has value 3.0", "[0, 1]")
    assert NWBHDF5IO  # pynwb is what wrote the files


def test_nwb_mixed_with_other_paths_is_an_error(tmp_path):
    from rulefinder.recording import group_inputs

    with pytest.raises(RecordingError, match="given together with other recordings"):
        group_inputs([tmp_path / "a.nwb", tmp_path / "b.npz"])


# ---- damaged files: each failure mode of the libraries underneath, named (issue #13) ----


def _stored_npz(tmp_path, name="d.npz"):
    p = tmp_path / name
    np.savez(p, responses=GOOD, session_time=np.arange(4.0))
    return p, bytearray(p.read_bytes())


def _central(raw: bytearray, member: int = 0) -> int:
    """Offset of the central-directory entry of ``member``."""
    at = -1
    for _ in range(member + 1):
        at = raw.find(b"PK\x01\x02", at + 1)
    return at


def _write(p, raw):
    p.write_bytes(bytes(raw))
    return p


def test_bad_crc_names_the_member(tmp_path):
    p, raw = _stored_npz(tmp_path)
    raw[raw.find(b"\x93NUMPY") + 200] ^= 0x10  # inside responses.npy's data
    _expect(_write(p, raw), str(p), "damaged archive", "'responses.npy'", "bad CRC-32")


def test_bad_local_header_magic(tmp_path):
    p, raw = _stored_npz(tmp_path)
    raw[0:4] = b"\0\0\0\0"
    _expect(_write(p, raw), "damaged archive", "'responses.npy'", "bad local header magic")


def test_truncated_archive(tmp_path):
    p, raw = _stored_npz(tmp_path)
    _expect(_write(p, raw[: len(raw) // 2]), str(p), "cannot be read as a NumPy .npz archive", "truncated")


def test_corrupt_deflate_stream(tmp_path):
    p = tmp_path / "z.npz"
    np.savez_compressed(p, responses=GOOD)
    raw = bytearray(p.read_bytes())
    start = raw.find(b"responses.npy") + len("responses.npy")
    start += int.from_bytes(raw[28:30], "little")  # the local header's extra field
    raw[start : start + 8] = b"\xff" * 8  # not a valid deflate block
    _expect(_write(p, raw), "damaged archive", "'responses.npy'", "compressed data is corrupt")


def test_member_marked_encrypted(tmp_path):
    p, raw = _stored_npz(tmp_path)
    raw[_central(raw) + 8] |= 0x01  # general-purpose flag bit 0: encrypted (zipfile: RuntimeError)
    _expect(_write(p, raw), "damaged archive", "encrypted")


def test_member_with_unknown_compression_method(tmp_path):
    p, raw = _stored_npz(tmp_path)
    raw[_central(raw) + 10] = 77  # compression method (zipfile: NotImplementedError)
    _expect(_write(p, raw), "damaged archive", "'responses.npy'", "unsupported zip feature")


def test_member_with_an_empty_name(tmp_path):
    # found by the fuzzer: zipfile's ZipInfo.is_dir() raised IndexError on an empty name
    p = tmp_path / "e.npz"
    with zipfile.ZipFile(p, "w") as zf:
        zf.writestr(zipfile.ZipInfo(""), b"x")
    _expect(p, "damaged archive", "zip member 0 has an empty name")
    _expect(p, "damaged archive", "empty name", loader=load_zarr_zip)


def _npy_member(tmp_path, header: bytes, data: bytes = b"", name="responses.npy"):
    p = tmp_path / "h.npz"
    body = header + b" " * (-(len(header) + 11) % 64) + b"\n"
    blob = b"\x93NUMPY\x01\x00" + len(body).to_bytes(2, "little") + body + data
    with zipfile.ZipFile(p, "w") as zf:
        zf.writestr(name, blob)
    return p


def test_npy_header_that_breaks_the_tokenizer(tmp_path):
    # numpy retries a header that is not a Python literal through tokenize, which raised
    # tokenize.TokenError on an unclosed bracket
    p = _npy_member(tmp_path, b"{'descr': '<f8', 'fortran_order': False, 'shape': ((3, 2, 2), }")
    _expect(p, str(p), "damaged archive", "'responses.npy'", "corrupt .npy header")


def test_npy_header_declaring_more_data_than_present(tmp_path):
    p = _npy_member(
        tmp_path, b"{'descr': '<f8', 'fortran_order': False, 'shape': (300000, 400000, 9), }", b"\0" * 96
    )
    _expect(p, "declares shape (300000, 400000, 9) of float64", "holds 96 bytes")


def test_npy_member_without_magic(tmp_path):
    p = tmp_path / "m.npz"
    with zipfile.ZipFile(p, "w") as zf:
        zf.writestr("responses.npy", b"garbage, not an array")
    _expect(p, "'responses.npy' does not start with the .npy magic")


def test_zarr_member_that_is_not_metadata(tmp_path):
    p = save_zarr_zip(make_recording(GOOD), tmp_path / "r.zarr.zip")
    with zipfile.ZipFile(p) as zf:
        members = {i.filename: zf.read(i) for i in zf.infolist()}
    chunk = next(n for n in members if n.startswith("responses/c"))
    members["zarr.json"], members[chunk] = members[chunk], members["zarr.json"]
    with zipfile.ZipFile(p, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    message = _expect(p, str(p), "damaged Zarr store", loader=load_zarr_zip)
    assert "rulefinder-zarr-" not in message  # the private unpacking folder is not shown


def test_truncated_nwb_session(tmp_path):
    paths = _sessions(tmp_path)
    raw = paths[1].read_bytes()
    paths[1].write_bytes(raw[: len(raw) // 3])
    _expect(lambda: load_nwb(paths), str(paths[1]), "truncated HDF5 file")


def test_nwb_with_a_zeroed_object_header(tmp_path):
    paths = _sessions(tmp_path, cache_spec=False)
    raw = bytearray(paths[0].read_bytes())
    raw[5000:9000] = bytes(4000)  # h5py/hdmf raised KeyError, ConstructError or TypeError here
    paths[0].write_bytes(bytes(raw))
    _expect(lambda: load_nwb(paths), str(paths[0]), "damaged NWB (HDF5) file")


@pytest.fixture
def nwb_timeout(monkeypatch):
    """Set RULEFINDER_NWB_READ_TIMEOUT_S for one test (0: read in-process)."""

    def set_timeout(seconds: float) -> None:
        monkeypatch.setenv("RULEFINDER_NWB_READ_TIMEOUT_S", str(seconds))
        get_settings.cache_clear()

    yield set_timeout
    monkeypatch.delenv("RULEFINDER_NWB_READ_TIMEOUT_S", raising=False)
    get_settings.cache_clear()


def test_a_bug_in_our_code_is_not_reported_as_a_damaged_file(tmp_path, monkeypatch, nwb_timeout):
    from rulefinder.recording import nwb as nwb_module

    def broken(*args, **kwargs):
        raise KeyError("a bug of ours")

    nwb_timeout(0)
    monkeypatch.setattr(nwb_module, "_ophys_container", broken)
    with pytest.raises(KeyError, match="a bug of ours"):
        load_nwb(_sessions(tmp_path))


def _plant_in_reader(tmp_path, monkeypatch, code: str) -> None:
    """Run the NWB reader process as a script that first runs ``code`` (a planted fault)."""
    import sys

    from rulefinder.recording import nwb_reader

    script = tmp_path / "reader.py"
    script.write_text(f"import rulefinder.recording.nwb_reader as r\n{code}\nr.main()\n")
    nwb_reader.shutdown()
    monkeypatch.setattr(nwb_reader, "_command", lambda: [sys.executable, str(script)])


def test_a_bug_in_the_nwb_reader_process_is_not_reported_as_a_damaged_file(tmp_path, monkeypatch, nwb_timeout):
    from rulefinder.recording import nwb_reader

    nwb_timeout(30)
    paths = _sessions(tmp_path)
    bug = "import rulefinder.recording.nwb as m\ndef broken(*a, **k): raise KeyError('a bug of ours')\nm._ophys_container = broken"
    _plant_in_reader(tmp_path, monkeypatch, bug)
    try:
        with pytest.raises(nwb_reader.NWBReaderCrash, match="KeyError: 'a bug of ours'") as info:
            load_nwb(paths)
        assert not isinstance(info.value, RecordingError) and str(paths[0]) in str(info.value)
        assert "in broken" in str(info.value)  # the reader's traceback comes along
        assert nwb_reader._reader is not None and nwb_reader._reader.alive()  # still in step, reused
    finally:
        nwb_reader.shutdown()


def test_nwb_reader_gives_what_the_in_process_read_gives(tmp_path, nwb_timeout):
    rec = make_recording(
        np.random.default_rng(2).normal(size=(3, 4, 5)),
        unit_area=["V1", "V1", "LM", "LM", "LM"],
        stimulus=["a", "b", "c", "d"],
        performance=[0.1, 0.5, 0.9],
    )
    paths = write_nwb_sessions(rec, tmp_path, trials_per_stimulus=2)
    nwb_timeout(0)
    here = load_nwb(paths)
    nwb_timeout(30)
    there = load_nwb(paths)
    import xarray as xr

    xr.testing.assert_identical(here, there)


def test_nwb_read_that_does_not_finish_is_a_recording_error(tmp_path, monkeypatch, nwb_timeout):
    """The reader process is killed after RULEFINDER_NWB_READ_TIMEOUT_S on one file, the file
    is named, and the next read starts a fresh reader. (The fuzz test holds a real libhdf5
    loop on a damaged file.)"""
    from rulefinder.recording import nwb_reader

    paths = _sessions(tmp_path)
    nwb_timeout(1)
    stuck = (
        "import time\nreal = r.read_nwb_session\n"
        "def stuck(path, source=None):\n"
        "    while path.endswith('session01.nwb'):\n"
        "        time.sleep(1)\n"
        "    return real(path, source=source)\n"
        "r.read_nwb_session = stuck"
    )
    with pytest.MonkeyPatch.context() as mp:
        _plant_in_reader(tmp_path, mp, stuck)
        _expect(lambda: load_nwb(paths), str(paths[1]), "did not finish within 1 s", "RULEFINDER_NWB_READ_TIMEOUT_S")
        assert nwb_reader._reader is None
    assert load_nwb(paths).sizes["session"] == 3
    nwb_reader.shutdown()


@pytest.mark.parametrize("what", ["shape", "chunk shape"])
def test_zarr_zip_declaring_a_huge_shape_is_refused_before_loading(tmp_path, what):
    """A damaged zarr.json can declare a shape whose chunks are missing, or a chunk far larger
    than the array: loading would allocate it (filled from the fill value) without bound.
    Found by the slow fuzz tier (14.8 GB of RSS)."""
    import json

    rec = make_recording(np.random.default_rng(0).normal(size=(3, 4, 5)))
    good = save_zarr_zip(rec, tmp_path / "good.zarr.zip", zarr_format=3)
    bad = tmp_path / "bad.zarr.zip"
    with zipfile.ZipFile(good) as zin, zipfile.ZipFile(bad, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename.endswith("zarr.json"):
                meta = json.loads(data)
                if "unit" in (meta.get("dimension_names") or []):
                    axis = meta["dimension_names"].index("unit")
                    if what == "shape":
                        meta["shape"][axis] = 10**9
                    else:
                        meta["chunk_grid"]["configuration"]["chunk_shape"][axis] = 10**9
                    data = json.dumps(meta).encode()
            zout.writestr(info, data)
    with pytest.raises(RecordingError, match=f"declares {what} " + r"\(3, 4, 1000000000\)"):
        load_recording(bad)
