"""rulefinder.virtual: every transform against its definition; seeds, composition, specs."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import xarray as xr
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from rulefinder.recording import make_recording, validate_recording
from rulefinder.virtual import (
    NOISE_LEVELS,
    TRANSFORMS,
    Calcium,
    GaussianNoise,
    KeepStimuli,
    KeepUnits,
    ScaleOffset,
    VirtualExperiment,
    VirtualSpecError,
    parse_step,
    virtual_spec,
)


def _rec(s=6, k=8, sizes=(5, 4, 3), seed=0, nan=False, relu=False):
    rng = np.random.default_rng(seed)
    n = sum(sizes)
    x = rng.standard_normal((s, k, n)) * rng.uniform(0.5, 2.0, n) + rng.standard_normal(n)
    if relu:
        x = np.maximum(x, 0)
    if nan:
        x[1:, 0, 0] = np.nan
        x[2, :, 1] = np.nan
    areas = np.repeat([f"L{i}" for i in range(len(sizes))], sizes)
    return make_recording(
        x,
        session_time=np.cumsum(rng.uniform(0.5, 2.0, s)),
        unit_area=areas,
        area_order=[f"L{i}" for i in range(len(sizes))],
        performance=np.linspace(0.1, 0.9, s),
        unit=[f"u{i}" for i in range(n)],
    )


def _run(step, rec, seed=0):
    return VirtualExperiment([step], seed=seed)(rec)


def _columns_by_id(rec):
    return {u: rec.sel(unit=u).values for u in rec.coords["unit"].values}


# --- sampling -----------------------------------------------------------------------------


def test_keep_units_random_keeps_labels_and_values():
    rec = _rec()
    out = _run({"op": "keep_units", "n": 5}, rec)
    assert out.sizes["unit"] == 5
    orig = _columns_by_id(rec)
    for u, area in zip(out.coords["unit"].values, out.coords["unit_area"].values):
        np.testing.assert_array_equal(out.sel(unit=u).values, orig[u])
        assert rec.sel(unit=u).coords["unit_area"].item() == area
    # kept units keep their original order
    ids = list(rec.coords["unit"].values)
    pos = [ids.index(u) for u in out.coords["unit"].values]
    assert pos == sorted(pos)


def test_keep_units_per_area():
    rec = _rec(sizes=(5, 4, 1))
    out = _run({"op": "keep_units", "n": 2, "per_area": True}, rec)
    counts = {a: int((out.coords["unit_area"].values == a).sum()) for a in ("L0", "L1", "L2")}
    assert counts == {"L0": 2, "L1": 2, "L2": 1}
    assert out.attrs["area_order"] == ["L0", "L1", "L2"]
    assert _run({"op": "keep_units", "n": 100}, rec).sizes["unit"] == rec.sizes["unit"]


@pytest.mark.parametrize("mode", ["even", "random", "early"])
def test_keep_sessions_keeps_order_and_coordinates(mode):
    rec = _rec(s=10)
    out = _run({"op": "keep_sessions", "n": 4, "mode": mode}, rec)
    assert out.sizes["session"] == 4
    t_all = list(rec.coords["session_time"].values)
    idx = [t_all.index(t) for t in out.coords["session_time"].values]
    assert idx == sorted(idx)
    for i, j in enumerate(idx):
        np.testing.assert_array_equal(out.isel(session=i).values, rec.isel(session=j).values)
        assert out.coords["performance"].values[i] == rec.coords["performance"].values[j]
    if mode == "even":
        assert idx[0] == 0 and idx[-1] == 9
    if mode == "early":
        assert idx == [0, 1, 2, 3]


def test_keep_sessions_drops_units_with_nothing_left():
    x = np.random.default_rng(1).standard_normal((6, 3, 3))
    x[:3, :, 2] = np.nan  # unit 2 only seen late
    out = _run({"op": "keep_sessions", "n": 3, "mode": "early"}, make_recording(x))
    assert out.sizes["unit"] == 2
    validate_recording(out)


def test_drop_areas_by_name_and_count():
    rec = _rec()
    out = _run({"op": "drop_areas", "areas": ["L1"]}, rec)
    assert set(out.coords["unit_area"].values) == {"L0", "L2"}
    assert out.attrs["area_order"] == ["L0", "L2"]
    out2 = _run({"op": "drop_areas", "n": 2}, rec)
    assert len(set(out2.coords["unit_area"].values)) == 1
    with pytest.raises(VirtualSpecError, match="leaves no area"):
        _run({"op": "drop_areas", "areas": ["L0", "L1", "L2"]}, rec)


# --- measurement --------------------------------------------------------------------------


@pytest.mark.parametrize("snr", [NOISE_LEVELS["moderate"], NOISE_LEVELS["high"], 5.0])
def test_gaussian_noise_achieves_snr_on_average(snr):
    rec = _rec(s=20, k=64, sizes=(50,), seed=2)
    x = rec.values
    signal = np.var(x, axis=1).mean(axis=0)  # per unit, as in the definition
    out = _run({"op": "gaussian_noise", "snr": snr}, rec, seed=3).values
    noise = (out - x).reshape(-1, x.shape[2]).var(axis=0)
    achieved = signal / noise
    assert np.mean(achieved) == pytest.approx(snr, rel=0.05)
    # trials average the noise down
    out_t = _run({"op": "gaussian_noise", "snr": snr, "trials": 4}, rec, seed=3).values
    noise_t = (out_t - x).reshape(-1, x.shape[2]).var(axis=0)
    assert np.mean(signal / noise_t) == pytest.approx(4 * snr, rel=0.05)


def test_gaussian_noise_levels_and_none():
    rec = _rec()
    assert NOISE_LEVELS == {"none": math.inf, "moderate": 2.0, "high": 0.5}
    np.testing.assert_array_equal(_run({"op": "gaussian_noise", "snr": "none"}, rec).values, rec.values)
    a = _run({"op": "gaussian_noise", "snr": "moderate"}, rec, seed=5).values
    b = _run({"op": "gaussian_noise", "snr": 2.0}, rec, seed=5).values
    np.testing.assert_array_equal(a, b)
    const = make_recording(np.ones((3, 4, 2)))  # no signal, no noise
    np.testing.assert_array_equal(_run({"op": "gaussian_noise", "snr": 0.5}, const).values, const.values)


def test_poisson_counts_have_the_right_mean_and_variance():
    rec = _rec(s=10, k=50, sizes=(40,), seed=4)
    x = rec.values
    lam = (x - x.min(axis=(0, 1))) * 3.0
    out = _run({"op": "poisson", "rate_scale": 3.0}, rec, seed=1).values
    assert np.all(out == np.round(out)) and out.min() >= 0
    resid = out - lam
    assert abs(resid.mean()) < 4 * np.sqrt(lam.mean() / lam.size)
    assert np.mean(resid**2) / lam.mean() == pytest.approx(1.0, rel=0.05)
    out5 = _run({"op": "poisson", "rate_scale": 3.0, "trials": 5}, rec, seed=1).values
    assert np.mean((out5 - lam) ** 2) / lam.mean() == pytest.approx(0.2, rel=0.07)


def test_poisson_keeps_nan():
    rec = _rec(nan=True)
    out = _run({"op": "poisson"}, rec)
    np.testing.assert_array_equal(np.isnan(out.values), np.isnan(rec.values))


def test_calcium_is_non_negative_and_smeared():
    x = np.zeros((3, 5, 2))
    x[:, 0, 0] = 1.0  # one response, to the first stimulus shown
    x[:, 2, 1] = 2.0
    rec = make_recording(x)
    tau = 2.0
    out = _run({"op": "calcium", "tau": tau, "noise": 0.0, "order": "stimulus"}, rec).values
    assert out.min() >= 0
    # the response decays over the following presentations by exp(-1/tau) per step
    np.testing.assert_allclose(out[:, 1:, 0] / out[:, :-1, 0], math.exp(-1 / tau))
    np.testing.assert_allclose(out[:, :2, 1], 0.0)
    np.testing.assert_allclose(out[:, 3, 1], 2.0 * math.exp(-1 / tau))
    # no smearing at tau = 0: dF/F is the rate
    np.testing.assert_allclose(_run({"op": "calcium", "tau": 0, "noise": 0.0}, rec).values, x)
    # raw fluorescence with noise stays non-negative, dF/F >= -1
    noisy_f = _run({"op": "calcium", "tau": 1.0, "noise": 2.0, "dff": False}, rec).values
    assert noisy_f.min() >= 0
    noisy = _run({"op": "calcium", "tau": 1.0, "noise": 2.0}, rec).values
    assert noisy.min() >= -1


def test_calcium_random_order_smears_within_sessions():
    rec = _rec(relu=True, s=4, k=12)
    out = _run({"op": "calcium", "tau": 3.0, "noise": 0.0}, rec)
    validate_recording(out)
    assert (out.values >= 0).all()
    assert not np.allclose(out.values, rec.values - rec.values.min(axis=(0, 1)))


def test_trial_variability():
    rec = _rec(s=10, k=40, sizes=(60,), seed=6)
    x = rec.values
    signal = np.var(x, axis=1).mean(axis=0)
    out = _run({"op": "trial_variability", "trials": 8, "snr": 1.0}, rec, seed=2).values
    noise = (out - x).reshape(-1, x.shape[2]).var(axis=0)
    assert np.mean(signal / noise) == pytest.approx(8.0, rel=0.07)
    gain_only = _run({"op": "trial_variability", "trials": 400, "snr": "none", "gain_sd": 0.3}, rec).values
    np.testing.assert_allclose(gain_only, x, atol=0.1 * np.abs(x).max())
    # shared gain: the whole population moves together on a trial
    one = _run({"op": "trial_variability", "trials": 1, "snr": "none", "gain_sd": 0.5}, rec).values
    ratio = one / x
    np.testing.assert_allclose(ratio, ratio[:, :, :1].repeat(x.shape[2], axis=2), rtol=1e-9)


@pytest.mark.parametrize("mode", ["attrition", "dropout"])
def test_unit_loss(mode):
    rec = _rec(s=12, k=4, sizes=(200,), seed=7)
    out = _run({"op": "unit_loss", "p": 0.2, "mode": mode}, rec, seed=3)
    validate_recording(out)
    lost = np.isnan(out.values).all(axis=1)  # (session, unit)
    assert not np.isnan(out.values).all(axis=(0, 1)).any()  # every unit keeps a session
    present = out.values[~np.isnan(out.values)]
    np.testing.assert_array_equal(present, rec.values[~np.isnan(out.values)])
    if mode == "attrition":
        assert not lost[0].any()
        # once lost, lost for good
        assert (np.diff(lost.astype(int), axis=0) >= 0).all()
        expected = 1 - 0.8 ** np.arange(12)
        np.testing.assert_allclose(lost.mean(axis=1), expected, atol=0.1)
    else:
        assert lost.mean() == pytest.approx(0.2, abs=0.03)


def test_scale_offset_exact():
    rec = _rec(nan=True)
    out = _run({"op": "scale_offset", "scale": 2.5, "offset": -1.0}, rec)
    np.testing.assert_array_equal(out.values, rec.values * 2.5 - 1.0)
    with pytest.raises(VirtualSpecError, match="scale"):
        parse_step({"op": "scale_offset", "scale": 0.0})


def test_keep_stimuli_keeps_ids_values_and_order():
    rec = _rec(k=10)
    out = _run({"op": "keep_stimuli", "n": 4}, rec, seed=3)
    kept = out.coords["stimulus"].values
    assert kept.size == 4 and list(kept) == sorted(kept)  # recorded order, original ids
    np.testing.assert_array_equal(out.values, rec.sel(stimulus=kept).values)
    for name in ("session_time", "unit_area", "unit", "performance"):
        np.testing.assert_array_equal(out.coords[name].values, rec.coords[name].values)
    assert out.attrs["area_order"] == rec.attrs["area_order"]


def test_keep_stimuli_range_is_drawn_per_application_and_capped():
    rec = _rec(k=10)
    counts = {_run({"op": "keep_stimuli", "n": [3, 50]}, rec, seed=s).sizes["stimulus"] for s in range(60)}
    assert counts <= set(range(3, 11)) and len(counts) > 4 and 10 in counts  # hi capped at the 10 recorded
    assert _run({"op": "keep_stimuli", "n": 10}, rec).sizes["stimulus"] == 10  # all of them: unchanged
    with pytest.raises(VirtualSpecError, match=r"keep_stimuli: n is 11: the recording has only 10 stimuli"):
        _run({"op": "keep_stimuli", "n": 11}, rec)
    with pytest.raises(VirtualSpecError, match=r"n is \[12, 20\]: the recording has only 10"):
        _run({"op": "keep_stimuli", "n": [12, 20]}, rec)


def test_keep_stimuli_drops_units_left_empty():
    rec = _rec(k=4)
    x = rec.values.copy()
    x[:, 1:, 0] = np.nan  # unit u0 was only seen on stimulus 0
    rec = make_recording(x, session_time=rec.coords["session_time"].values, unit_area=rec.coords["unit_area"].values,
                         unit=rec.coords["unit"].values, stimulus=[10, 11, 12, 13])
    seeds = [s for s in range(50) if 10 not in _run(KeepStimuli(2), rec, seed=s).coords["stimulus"].values]
    out = _run(KeepStimuli(2), rec, seed=seeds[0])
    assert "u0" not in out.coords["unit"].values and out.sizes["unit"] == rec.sizes["unit"] - 1


def test_scale_offset_relative_and_per_unit():
    rec = _rec()
    out = _run({"op": "scale_offset", "scale": 3.0, "offset": 2.0, "relative": True}, rec)
    np.testing.assert_allclose(out.values, rec.values * 3 + 2.0 * np.std(rec.values * 3))
    per_unit = _run({"op": "scale_offset", "unit_offset_sd": 1.0, "relative": True}, rec, seed=1)
    shift = per_unit.values - rec.values
    np.testing.assert_allclose(shift, np.broadcast_to(shift[:1, :1, :], shift.shape), atol=1e-12)  # one per unit
    assert np.ptp(shift[0, 0]) > 0
    with pytest.raises(VirtualSpecError, match="unit_offset_sd is -1"):
        parse_step({"op": "scale_offset", "unit_offset_sd": -1})


# --- pipeline -----------------------------------------------------------------------------

STEPS = [
    {"op": "keep_units", "n": 3, "per_area": True},
    {"op": "keep_sessions", "n": 4, "mode": "random"},
    {"op": "gaussian_noise", "snr": "high"},
    {"op": "unit_loss", "p": 0.2},
    {"op": "scale_offset", "scale": 3.0, "offset": 1.0},
]


def test_seeded_determinism():
    rec = _rec(s=8)
    a = VirtualExperiment(STEPS, seed=11)(rec)
    b = VirtualExperiment(STEPS, seed=11)(rec)
    c = VirtualExperiment(STEPS, seed=12)(rec)
    np.testing.assert_array_equal(a.values, b.values)
    assert a.shape != c.shape or not np.array_equal(a.values, c.values, equal_nan=True)
    # each step has its own stream: changing one step's parameters leaves the others' draws
    noise_a = VirtualExperiment([STEPS[0], {"op": "gaussian_noise", "snr": 1.0}], seed=3)(rec)
    noise_b = VirtualExperiment([{"op": "keep_units", "n": 3, "per_area": True}, {"op": "gaussian_noise", "snr": 4.0}], seed=3)(rec)
    assert list(noise_a.coords["unit"].values) == list(noise_b.coords["unit"].values)


def test_composition_is_application_in_order():
    rec = _rec()
    both = VirtualExperiment([{"op": "scale_offset", "scale": 2.0}, {"op": "scale_offset", "offset": 1.0}], seed=0)(rec)
    np.testing.assert_allclose(both.values, rec.values * 2 + 1)
    flipped = VirtualExperiment([{"op": "scale_offset", "offset": 1.0}, {"op": "scale_offset", "scale": 2.0}], seed=0)(rec)
    np.testing.assert_allclose(flipped.values, (rec.values + 1) * 2)
    # chaining experiments keeps the earlier description
    first = VirtualExperiment([STEPS[0]], seed=1)(rec)
    second = VirtualExperiment([STEPS[4]], seed=2)(first)
    spec = virtual_spec(second)
    assert spec["steps"] == [ScaleOffset(3.0, 1.0).spec()]
    assert spec["previous"]["steps"] == [KeepUnits(3, True).spec()]


def test_spec_round_trip_through_json_and_disk(tmp_path):
    rec = _rec(s=8)
    ve = VirtualExperiment(STEPS + [{"op": "calcium", "tau": 1.5}, {"op": "poisson", "rate_scale": 2.0}], seed=5)
    out = ve(rec)
    text = out.attrs["virtual"]
    assert json.loads(text) == json.loads(ve.to_json())
    again = VirtualExperiment.from_json(text)
    assert again.spec() == ve.spec()
    np.testing.assert_array_equal(again(rec).values, out.values)
    # the description is a plain string attribute: it survives a Zarr store written by xarray
    out.to_dataset().to_zarr(tmp_path / "v.zarr", zarr_format=2, consolidated=False)
    back = xr.open_zarr(tmp_path / "v.zarr", consolidated=False)["responses"]
    assert virtual_spec(back) == ve.spec()
    for cls in TRANSFORMS.values():
        t = cls(n=1) if cls.op == "drop_areas" else cls()  # drop_areas needs names or a count
        assert parse_step(json.loads(json.dumps(t.spec()))) == t
    ranged = KeepStimuli((16, 48))
    assert ranged.spec() == {"op": "keep_stimuli", "n": [16, 48]}
    assert parse_step(json.loads(json.dumps(ranged.spec()))) == ranged


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"op": "shuffle"}, "unknown op 'shuffle'"),
        ({"n": 3}, "missing 'op'"),
        ({"op": "keep_units", "n": 0}, "n is 0"),
        ({"op": "keep_units", "n": 3, "area": "V1"}, r"unknown parameter\(s\) \['area'\]"),
        ({"op": "keep_sessions", "n": 2}, "n is 2"),
        ({"op": "keep_sessions", "n": 4, "mode": "late"}, "mode is 'late'"),
        ({"op": "gaussian_noise", "snr": -1}, "snr -1"),
        ({"op": "gaussian_noise", "snr": "loud"}, "snr 'loud'"),
        ({"op": "poisson", "rate_scale": 0}, "rate_scale is 0"),
        ({"op": "calcium", "order": "sorted"}, "order is 'sorted'"),
        ({"op": "unit_loss", "p": 1.0}, "p is 1.0"),
        ({"op": "drop_areas"}, "either areas"),
        ({"op": "keep_stimuli", "n": 1}, "n is 1"),
        ({"op": "keep_stimuli", "n": [20, 10]}, r"n is \[20, 10\]"),
        ({"op": "keep_stimuli", "n": [4, 8, 9]}, "a range"),
    ],
)
def test_spec_parser_errors(spec, message):
    with pytest.raises(VirtualSpecError, match=message):
        parse_step(spec)


def test_bad_seed():
    with pytest.raises(VirtualSpecError, match="seed"):
        VirtualExperiment([], seed=-1)


ALL_STEPS = [
    {"op": "keep_units", "n": 2},
    {"op": "keep_units", "n": 1, "per_area": True},
    {"op": "keep_sessions", "n": 3, "mode": "even"},
    {"op": "keep_sessions", "n": 3, "mode": "random"},
    {"op": "drop_areas", "n": 1},
    {"op": "gaussian_noise", "snr": "moderate"},
    {"op": "poisson", "rate_scale": 5.0},
    {"op": "calcium", "tau": 2.0},
    {"op": "trial_variability", "trials": 3, "snr": 1.0, "gain_sd": 0.2},
    {"op": "unit_loss", "p": 0.5, "mode": "dropout"},
    {"op": "unit_loss", "p": 0.5},
    {"op": "scale_offset", "scale": 0.1, "offset": 5.0},
    {"op": "scale_offset", "offset": 1.0, "unit_offset_sd": 0.5, "relative": True},
    {"op": "keep_stimuli", "n": [2, 3]},
]


@settings(max_examples=30)
@given(
    st.lists(st.sampled_from(ALL_STEPS), min_size=1, max_size=4),
    st.integers(0, 2**31 - 1),
    st.booleans(),
)
def test_every_output_is_a_valid_recording(steps, seed, nan):
    rec = _rec(s=5, k=3, sizes=(3, 2), seed=seed % 1000, nan=nan)
    try:
        out = VirtualExperiment(steps, seed=seed)(rec)
    except VirtualSpecError as e:
        # Legitimate refusals: too few units left to fill 3 sessions, no area left to drop.
        assert "have values in only" in str(e) or "cannot drop" in str(e)
        assume(False)
    validate_recording(out)
    assert out.attrs["virtual"]
