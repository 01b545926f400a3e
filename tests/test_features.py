"""rulefinder.features: invariances (hypothesis), shapes, edge cases, batched == per-recording."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st

from rulefinder.features import (
    STAT_NAMES,
    FeatureExtractor,
    block_features,
    feature_names,
    recording_features,
    session_statistics,
)
from rulefinder.recording import make_recording

RTOL = 1e-6


@st.composite
def recordings(draw, min_sessions=3, max_sessions=7):
    """Small recordings of every legal kind: S >= 3 at irregular times, K >= 2, 1-3 areas of
    N >= 1 units, optional area order, and values that are Gaussian, rectified (ties at 0),
    offset, integer-valued, with constant units and with NaN (lost) values."""
    s = draw(st.integers(min_sessions, max_sessions))
    k = draw(st.integers(2, 9))
    sizes = draw(st.lists(st.integers(1, 6), min_size=1, max_size=3))
    seed = draw(st.integers(0, 2**31 - 1))
    kind = draw(st.sampled_from(["gauss", "relu", "offset", "integer"]))
    rng = np.random.default_rng(seed)
    n = sum(sizes)
    x = rng.standard_normal((s, k, n)) * rng.uniform(0.2, 3.0, n) + rng.standard_normal(n)
    if kind == "relu":
        x = np.maximum(x, 0.0)
    elif kind == "offset":
        x = x + 50.0
    elif kind == "integer":
        x = np.round(x * 2)
    if draw(st.booleans()):  # a constant unit (silent neuron / dead ReLU)
        x[:, :, rng.integers(n)] = draw(st.sampled_from([0.0, 1.5]))
    if draw(st.booleans()):  # lost values, never a whole unit or session
        nan = rng.random((s, k, n)) < 0.2
        nan[0] = False
        nan[np.arange(s), rng.integers(k, size=s), rng.integers(n, size=s)] = False
        x[nan] = np.nan
    times = np.cumsum(rng.uniform(0.1, 5.0, s))
    areas = np.repeat([f"a{i}" for i in range(len(sizes))], sizes)
    order = [f"a{i}" for i in range(len(sizes))] if draw(st.booleans()) else None
    return make_recording(x, session_time=times, unit_area=areas, area_order=order)


def _feats(rec) -> np.ndarray:
    return recording_features(rec).values


def _close(a, b):
    np.testing.assert_allclose(a, b, rtol=RTOL, atol=0)


@settings(max_examples=40)
@given(recordings(), st.data())
def test_invariant_to_unit_permutation_within_areas(rec, data):
    areas = rec.coords["unit_area"].values
    perm = np.arange(areas.size)
    for a in np.unique(areas):
        idx = np.flatnonzero(areas == a)
        perm[idx] = idx[np.asarray(data.draw(st.permutations(range(idx.size))))]
    _close(_feats(rec), _feats(rec.isel(unit=perm)))
    # Any permutation of units (areas travel with their units): the same features per area.
    full = np.asarray(data.draw(st.permutations(range(areas.size))))
    a = recording_features(rec)
    b = recording_features(rec.isel(unit=full)).sel(area=a.coords["area"].values)
    _close(a.values, b.values)


@settings(max_examples=40)
@given(recordings(), st.data())
def test_invariant_to_stimulus_permutation(rec, data):
    perm = np.asarray(data.draw(st.permutations(range(rec.sizes["stimulus"]))))
    _close(_feats(rec), _feats(rec.isel(stimulus=perm)))


@settings(max_examples=40)
@given(recordings(), st.floats(1e-3, 1e3))
def test_invariant_to_positive_scale(rec, c):
    _close(_feats(rec), _feats(rec * c))


@settings(max_examples=25)
@given(recordings(min_sessions=3, max_sessions=5))
def test_finite_for_every_legal_recording(rec):
    f = recording_features(rec)
    assert np.isfinite(f.values).all()
    assert f.dims == ("area", "stat", "time")
    assert list(f.coords["area"].values) == list(dict.fromkeys(rec.attrs.get("area_order") or rec.coords["unit_area"].values.tolist()))


def test_nayebi_statistics_match_scipy():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 8, 20)) + 0.3
    stats = session_statistics(x[None])[0]  # (S, F), divided by the area scale s
    s = np.sqrt(np.mean(x**2))
    col = {n: i for i, n in enumerate(STAT_NAMES)}
    for t in range(4):
        v = x[t].ravel()
        for name, vals, p in (("raw", v, 1), ("abs", np.abs(v), 1), ("sq", v**2, 2)):
            expect = {
                "l2": np.sqrt(np.mean(vals**2)),
                "mean": vals.mean(),
                "median": np.median(vals),
                "q3": np.quantile(vals, 0.75),
                "var": vals.var(),
            }
            for stat, val in expect.items():
                power = 2 * p if stat == "var" else p
                np.testing.assert_allclose(stats[t, col[f"{name}_{stat}"]] * s**power, val, rtol=1e-6)
            np.testing.assert_allclose(stats[t, col[f"{name}_skew"]], scipy.stats.skew(vals), rtol=1e-8)
            np.testing.assert_allclose(stats[t, col[f"{name}_kurt"]], scipy.stats.kurtosis(vals), rtol=1e-8)


def test_geometry_and_drift_statistics():
    rng = np.random.default_rng(2)
    base = rng.standard_normal((16, 30))
    # Sessions: identical to the first, then the same representation rotated, then new.
    q, _ = np.linalg.qr(rng.standard_normal((30, 30)))
    x = np.stack([base, base, base @ q, rng.standard_normal((16, 30))])
    stats = session_statistics(x[None])[0]
    col = {n: i for i, n in enumerate(STAT_NAMES)}
    assert stats[0, col["cka_first"]] == pytest.approx(1.0)
    assert stats[1, col["dist_first"]] == 0.0
    assert stats[2, col["cka_first"]] == pytest.approx(1.0)  # CKA ignores rotations of units
    assert stats[2, col["dist_first"]] > 0.5
    assert stats[3, col["cka_first"]] < 0.9
    # Participation ratio: a rank-1 representation has PR = 1 / min(K - 1, N).
    rank1 = np.outer(rng.standard_normal(16), rng.standard_normal(30))[None].repeat(3, 0)
    pr = session_statistics(rank1[None])[0][:, col["participation_ratio"]]
    np.testing.assert_allclose(pr, 1 / 15)


def test_constant_and_silent_units_do_not_break_anything():
    x = np.zeros((4, 5, 3))
    x[:, :, 1] = 2.0
    rec = make_recording(x)
    f = recording_features(rec)
    assert np.isfinite(f.values).all()
    for stat in ("selectivity", "lifetime_sparseness", "participation_ratio", "dist_first"):
        assert float(np.abs(f.sel(stat=stat)).max()) == 0.0
    flat = recording_features(make_recording(np.full((3, 4, 2), 7.0)))
    assert np.isfinite(flat.values).all()
    for stat in ("raw_var", "raw_skew", "raw_kurt", "sq_skew", "cka_first"):
        assert float(np.abs(flat.sel(stat=stat)).max()) == 0.0


def test_irregular_times_resampled_on_relative_grid():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 4, 5))
    a = recording_features(make_recording(x, session_time=[0.0, 1.0, 10.0]))
    b = recording_features(make_recording(x, session_time=[100.0, 200.0, 1100.0]))  # same relative spacing
    np.testing.assert_allclose(a.values, b.values, rtol=1e-12)
    c = recording_features(make_recording(x, session_time=[0.0, 9.0, 10.0]))
    assert not np.allclose(a.values, c.values)
    # At the grid points that fall on sessions the trajectory is the session's statistic.
    stats = session_statistics(x[None])[0]
    np.testing.assert_allclose(a.sel(time=0.0).values[0], stats[0])
    np.testing.assert_allclose(a.sel(time=1.0).values[0], stats[-1])
    np.testing.assert_allclose(a.sel(time=0.1).values[0], stats[1])


def test_area_missing_a_whole_session_is_bridged():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((5, 4, 6))
    x[2, :, :3] = np.nan  # area a lost entirely in session 2, area b present
    rec = make_recording(x, unit_area=["a"] * 3 + ["b"] * 3)
    f = recording_features(rec)
    assert np.isfinite(f.values).all()
    _close(f.values, recording_features(rec * 3.0).values)  # the area scale ignores the gap


def test_depth_position_from_area_order():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 4, 6))
    areas = ["V1", "V1", "LM", "LM", "AL", "AL"]
    known = recording_features(make_recording(x, unit_area=areas, area_order=["V1", "LM", "AL"]))
    assert list(known.coords["area"].values) == ["V1", "LM", "AL"]
    np.testing.assert_allclose(known.coords["depth"].values, [0.0, 0.5, 1.0])
    assert (known.coords["depth_known"].values == 1).all()
    unknown = recording_features(make_recording(x, unit_area=areas))
    assert (unknown.coords["depth_known"].values == 0).all()
    flat = FeatureExtractor().fit().transform(make_recording(x, unit_area=areas, area_order=["V1", "LM", "AL"]))
    np.testing.assert_allclose(flat.sel(feature="depth").values, [0.0, 0.5, 1.0])


def test_batched_path_equals_per_recording_path():
    rng = np.random.default_rng(6)
    block = np.maximum(rng.standard_normal((5, 6, 8, 12)), 0).astype(np.float32)
    areas = np.repeat(["l1", "l2", "l3"], 4)
    times = np.array([0, 1, 2, 4, 8, 16.0])
    fe = FeatureExtractor(n_threads=2, chunk=2).fit()
    batched = fe.transform_block(block, times, areas, ["l1", "l2", "l3"])
    recs = [make_recording(b, session_time=times, unit_area=areas, area_order=["l1", "l2", "l3"]) for b in block]
    single = fe.transform(recs)
    assert batched.shape == single.shape == (15, len(fe.feature_names_))
    np.testing.assert_array_equal(batched.values, single.values)
    assert list(batched.coords["area"].values) == list(single.coords["area"].values)
    assert list(batched.coords["recording"].values) == list(single.coords["recording"].values)
    # Torch blocks and DataArray blocks with a network dim go through the same path.
    import torch

    via_torch = fe.transform_block(torch.from_numpy(block), times, areas, ["l1", "l2", "l3"])
    np.testing.assert_array_equal(via_torch.values, batched.values)
    da = xr.DataArray(
        block,
        dims=("network", "session", "stimulus", "unit"),
        coords={"session_time": ("session", times), "unit_area": ("unit", areas)},
        attrs={"area_order": ["l1", "l2", "l3"]},
    )
    via_da = block_features(da)
    assert via_da.dims == ("network", "area", "stat", "time")
    np.testing.assert_array_equal(via_da.values, batched.values.reshape(5, 3, -1)[..., :-2].reshape(via_da.shape))


def test_batched_path_with_nan_rows_equals_per_recording_path():
    rng = np.random.default_rng(7)
    block = rng.standard_normal((3, 4, 5, 6))
    block[1, 2, :, 0] = np.nan
    fe = FeatureExtractor(n_threads=1, chunk=1).fit()
    batched = fe.transform_block(block)
    single = fe.transform([make_recording(b) for b in block])
    np.testing.assert_array_equal(batched.values, single.values)


def test_extractor_names_and_shapes():
    fe = FeatureExtractor(n_times=5).fit()
    assert fe.feature_names_ == feature_names(5)
    assert len(fe.feature_names_) == len(STAT_NAMES) * 5 + 2
    assert list(fe.get_feature_names_out()) == fe.feature_names_
    rng = np.random.default_rng(8)
    recs = [
        make_recording(rng.standard_normal((3, 2, 1))),
        make_recording(rng.standard_normal((7, 10, 4)), unit_area=["a", "b", "b", "c"]),
    ]
    out = fe.transform(recs)
    assert out.dims == ("sample", "feature")
    assert out.shape == (4, fe.n_features_out_)
    assert list(out.coords["recording"].values) == [0, 1, 1, 1]
    assert np.isfinite(out.values).all()


def test_benchmark_prints_one_json_object():
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "features.py"
    res = subprocess.run(
        [sys.executable, str(script), "--recordings", "4", "--sessions", "5", "--stimuli", "8",
         "--units", "16", "--areas", "2", "--threads", "1", "--repeats", "1"],
        capture_output=True, text=True, check=True, timeout=120,
    )
    out = json.loads(res.stdout)
    assert out["recordings_per_s"] > 0 and out["plain_pass_recordings_per_s"] > 0


def test_only_the_sessions_the_grid_reads_are_computed_and_the_numbers_do_not_change():
    """With more sessions than the grid's segments read, statistics are computed for those
    sessions only; the trajectories equal those from every session (rounding apart), alone
    or in a block whose recordings have different session times."""
    from rulefinder.features.extractor import _session_trajectories
    from rulefinder.features.resample import resample

    rng = np.random.default_rng(12)
    block = np.maximum(rng.standard_normal((3, 25, 6, 9)) + np.linspace(0, 2, 25)[None, :, None, None], 0)
    times = np.cumsum(rng.uniform(0.1, 3.0, (3, 25)), axis=1)
    for n_times in (3, 6):
        full = resample(session_statistics(block), times, n_times)
        fast = resample(_session_trajectories(block, times, n_times), times, n_times)
        np.testing.assert_allclose(fast, full, rtol=1e-12, atol=1e-12)
    areas = np.repeat(["l1", "l2"], [4, 5])
    fe = FeatureExtractor(n_times=4, n_threads=1, chunk=3).fit()
    batched = fe.transform_block(block, times, areas, ["l1", "l2"])
    recs = [make_recording(b, session_time=t, unit_area=areas, area_order=["l1", "l2"]) for b, t in zip(block, times)]
    np.testing.assert_array_equal(batched.values, fe.transform(recs).values)
