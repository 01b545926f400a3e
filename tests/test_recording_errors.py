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
