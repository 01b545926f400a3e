"""Round trips: the same recording written as NPZ, NWB and Zarr loads to the same thing."""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rulefinder.recording import (
    load_npz,
    load_nwb,
    load_recording,
    load_recording_with_warnings,
    load_zarr_zip,
    make_recording,
    save_npz,
    save_zarr_zip,
    write_nwb_sessions,
)


def _recording(rng, s=5, k=4, n=6, areas=("V1", "LM"), nan_frac=0.0, order=True, perf=True):
    resp = rng.normal(size=(s, k, n))
    if nan_frac:
        resp[rng.random(resp.shape) < nan_frac] = np.nan
        resp[:, 0, :] = rng.normal(size=(s, n))  # keep every unit and session alive
    unit_area = np.array([areas[i % len(areas)] for i in range(n)])
    return make_recording(
        resp,
        session_time=np.cumsum(rng.uniform(0.25, 3.0, size=s)),
        unit_area=unit_area,
        stimulus=np.arange(10, 10 + k),
        performance=np.linspace(0.1, 0.9, s) if perf else None,
        area_order=list(dict.fromkeys(unit_area.tolist())) if order else None,
    )


def _align_units(loaded, original):
    """NWB writes one plane per area, so units come back grouped by area: put them back
    in the original order using the global ids (= original positions)."""
    ids = loaded.coords["unit"].values.astype(int)
    return loaded.isel(unit=np.argsort(ids)).assign_coords(unit=np.arange(original.sizes["unit"]))


def _assert_same(a, b, *, relative_time=False, area_order=True, rtol=0.0):
    """Equal recordings; ``rtol`` > 0 only where a mean over several trials was taken."""
    np.testing.assert_allclose(a.values, b.values, rtol=rtol, atol=0)
    np.testing.assert_array_equal(a.coords["unit_area"].values, b.coords["unit_area"].values)
    np.testing.assert_array_equal(a.coords["stimulus"].values, b.coords["stimulus"].values)
    ta, tb = a.coords["session_time"].values, b.coords["session_time"].values
    if relative_time:
        tb = tb - tb[0]
    np.testing.assert_allclose(ta, tb, rtol=0, atol=1e-9)
    if "performance" in b.coords:
        np.testing.assert_allclose(a.coords["performance"].values, b.coords["performance"].values)
    if area_order:
        assert a.attrs.get("area_order") == b.attrs.get("area_order")


def test_npz_round_trip(tmp_path):
    rec = _recording(np.random.default_rng(0), nan_frac=0.2)
    loaded = load_npz(save_npz(rec, tmp_path / "r.npz"))
    _assert_same(loaded, rec)


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_zarr_round_trip(tmp_path, zarr_format):
    rec = _recording(np.random.default_rng(1), nan_frac=0.2)
    path = save_zarr_zip(rec, tmp_path / "r.zarr.zip", zarr_format=zarr_format)
    _assert_same(load_zarr_zip(path), rec)


def test_zarr_keeps_json_attributes(tmp_path):
    rec = _recording(np.random.default_rng(11)).assign_attrs(virtual='[{"op": "poisson"}]')
    loaded = load_zarr_zip(save_zarr_zip(rec, tmp_path / "r.zarr.zip"))
    assert loaded.attrs["virtual"] == '[{"op": "poisson"}]'
    assert loaded.attrs["area_order"] == rec.attrs["area_order"]


@pytest.mark.parametrize("container", ["DfOverF", "Fluorescence"])
def test_nwb_ophys_round_trip(tmp_path, container):
    rec = _recording(np.random.default_rng(2), nan_frac=0.1)
    paths = write_nwb_sessions(rec, tmp_path, container=container, trials_per_stimulus=3)
    loaded = _align_units(load_nwb(paths), rec)
    _assert_same(loaded, rec, relative_time=True, area_order=False, rtol=1e-14)
    assert "area_order" not in loaded.attrs


def test_nwb_spike_units_round_trip(tmp_path):
    rng = np.random.default_rng(3)
    counts = rng.poisson(5.0, size=(4, 3, 5)).astype(float)
    rec = make_recording(counts, unit_area=np.array(["CA1", "CA1", "CA3", "CA3", "CA3"]))
    loaded = _align_units(load_nwb(write_nwb_sessions(rec, tmp_path, kind="units")), rec)
    # 1-s trials, so the rate in spikes/s equals the count
    _assert_same(loaded, rec, relative_time=True, area_order=False)


def test_nwb_unit_lost_between_sessions(tmp_path):
    rec = _recording(np.random.default_rng(4), s=4, n=5)
    values = rec.values.copy()
    values[2, :, 3] = np.nan  # unit 3 is not tracked in session 2
    values[3, :, 0] = np.nan  # unit 0 is lost in the last session
    rec = rec.copy(data=values)
    paths = write_nwb_sessions(rec, tmp_path)
    loaded = _align_units(load_nwb(paths), rec)
    assert np.isnan(loaded.values[2, :, 3]).all() and np.isnan(loaded.values[3, :, 0]).all()
    _assert_same(loaded, rec, relative_time=True, area_order=False)


def test_nwb_shuffled_session_files_are_ordered_by_start_time(tmp_path):
    rec = _recording(np.random.default_rng(5), s=6)
    paths = write_nwb_sessions(rec, tmp_path)
    shuffled = paths[:]
    random.Random(0).shuffle(shuffled)
    assert shuffled != paths
    loaded = _align_units(load_nwb(shuffled), rec)
    _assert_same(loaded, rec, relative_time=True, area_order=False)


def test_nwb_several_planes_concatenate_units_with_their_own_area(tmp_path):
    rec = _recording(np.random.default_rng(6), n=9, areas=("V1", "LM", "AL"))
    loaded = load_nwb(write_nwb_sessions(rec, tmp_path))
    # units arrive plane by plane, each with its plane's location as area
    assert loaded.coords["unit_area"].values.tolist() == ["V1"] * 3 + ["LM"] * 3 + ["AL"] * 3
    _assert_same(_align_units(loaded, rec), rec, relative_time=True, area_order=False)


def test_nwb_without_global_id_matches_by_row_order(tmp_path):
    rec = _recording(np.random.default_rng(7), areas=("V1",))
    loaded = load_nwb(write_nwb_sessions(rec, tmp_path, global_id=False))
    assert "unit" not in loaded.coords
    _assert_same(loaded, rec, relative_time=True, area_order=False)


def test_nwb_area_order_given_by_the_user(tmp_path):
    rec = _recording(np.random.default_rng(8))
    paths = write_nwb_sessions(rec, tmp_path)
    loaded = load_recording(paths, area_order=["V1", "LM"])
    assert loaded.attrs["area_order"] == ["V1", "LM"]


def test_nwb_stimuli_not_in_every_session_are_dropped_with_a_warning(tmp_path):
    rng = np.random.default_rng(9)
    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    paths = []
    for s, stim in enumerate([[1, 2, 3, 4], [2, 3, 4], [1, 2, 3, 4]]):
        one = make_recording(
            rng.normal(size=(3, len(stim), 2)), stimulus=np.array(stim)
        ).isel(session=[0, 1, 2])
        written = write_nwb_sessions(
            one, tmp_path / str(s), start=start + timedelta(days=10 * s), prefix=f"s{s}_"
        )
        paths.append(written[0])
    rec, notes = load_recording_with_warnings(paths)
    assert rec.coords["stimulus"].values.tolist() == [2, 3, 4]
    assert any("not shown in every session" in n and "[1]" in n for n in notes)


def test_reduce_then_load_npz_equals_loading_nwb(tmp_path):
    from typer.testing import CliRunner

    from rulefinder.cli import app

    rec = _recording(np.random.default_rng(10), nan_frac=0.1)
    write_nwb_sessions(rec, tmp_path / "sessions")
    out = tmp_path / "reduced.npz"
    result = CliRunner().invoke(app, ["reduce", str(tmp_path / "sessions"), "-o", str(out)])
    assert result.exit_code == 0, result.output
    from_nwb = load_recording(tmp_path / "sessions")
    from_npz = load_npz(out)
    np.testing.assert_array_equal(from_npz.values, from_nwb.values)
    np.testing.assert_array_equal(from_npz.unit_area.values, from_nwb.unit_area.values)
    np.testing.assert_array_equal(from_npz.stimulus.values, from_nwb.stimulus.values)
    np.testing.assert_allclose(from_npz.session_time.values, from_nwb.session_time.values)
    np.testing.assert_allclose(from_npz.performance.values, from_nwb.performance.values)


@st.composite
def recordings(draw):
    s = draw(st.integers(3, 5))
    k = draw(st.integers(2, 4))
    n = draw(st.integers(1, 6))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    labels = draw(st.lists(st.sampled_from(["V1", "LM", "AL", "area 4"]), min_size=n, max_size=n))
    resp = rng.normal(size=(s, k, n)) * draw(st.sampled_from([1e-3, 1.0, 1e3]))
    nan_mask = rng.random((s, k, n)) < draw(st.sampled_from([0.0, 0.2, 0.5]))
    # a unit may miss whole sessions (lost from tracking), but never all of them
    lost = rng.random((s, n)) < draw(st.sampled_from([0.0, 0.3]))
    lost[rng.integers(0, s, size=n), np.arange(n)] = False
    nan_mask |= lost[:, None, :]
    keep = (rng.integers(0, s, size=n), rng.integers(0, k, size=n), np.arange(n))
    nan_mask[keep] = False
    nan_mask[np.arange(s), 0, rng.integers(0, n, size=s)] = False
    resp[nan_mask] = np.nan
    return make_recording(
        resp,
        session_time=np.cumsum(rng.uniform(0.1, 5.0, size=s)),
        unit_area=np.array(labels),
        stimulus=np.array(sorted(rng.choice(1000, size=k, replace=False))),
    )


@settings(max_examples=12)
@given(rec=recordings())
def test_property_same_recording_in_every_format(rec):
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        from_npz = load_npz(save_npz(rec, tmp / "r.npz"))
        from_zarr = load_zarr_zip(save_zarr_zip(rec, tmp / "r.zarr.zip"))
        from_nwb = _align_units(load_nwb(write_nwb_sessions(rec, tmp / "nwb")), rec)
    for loaded in (from_npz, from_zarr):
        _assert_same(loaded, rec)
    _assert_same(from_nwb, rec, relative_time=True, area_order=False)
