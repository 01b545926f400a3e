"""Learning-dynamics features (rulefinder.classify.dynamics): the activity clock and the spread
of change, their invariances, and that they read what they claim to."""

import numpy as np
import pytest

from rulefinder.classify.dynamics import (
    activity_clock,
    progress_feature_names,
    progress_features,
    spread_feature_names,
    spread_features,
)


def _learning_block(rng, s=21, k=32, n=20, speed=1.0):
    """Responses that move from a start to an end point along an exponential learning curve."""
    start, end = rng.normal(size=(k, n)), rng.normal(size=(k, n))
    t = np.linspace(0, 1, s)
    frac = (1 - np.exp(-speed * 8 * t)) / (1 - np.exp(-speed * 8))
    return start[None] + frac[:, None, None] * (end - start)[None], t


def test_clock_runs_from_0_to_1_and_follows_learning_not_wall_time():
    rng = np.random.default_rng(0)
    fast, tau = _learning_block(rng, speed=2.0)
    slow, _ = _learning_block(rng, speed=0.3)
    c_fast, c_slow = activity_clock([fast], tau), activity_clock([slow], tau)
    for c in (c_fast, c_slow):
        assert c[0] == 0 and c[-1] == pytest.approx(1.0) and np.all(np.diff(c) >= 0)
    # A fast learner is further along its clock at the same relative time.
    assert c_fast[5] > c_slow[5] + 0.2


def test_clock_falls_back_to_relative_time_when_nothing_changes():
    tau = np.linspace(0, 1, 6)
    block = np.repeat(np.random.default_rng(1).normal(size=(1, 8, 5)), 6, axis=0)
    np.testing.assert_allclose(activity_clock([block], tau), tau)


def test_progress_features_equalise_learning_speed():
    """Two networks that learn the same thing at different speeds give the same statistics on
    the activity clock, while on relative time they differ."""
    rng = np.random.default_rng(2)
    fast, tau = _learning_block(np.random.default_rng(3), speed=2.0)
    slow, _ = _learning_block(np.random.default_rng(3), speed=0.5)

    def stat(x):  # a statistic that moves with learning: mean response of each session
        return x.mean(axis=(1, 2))[None, :, None]

    f_fast = progress_features(stat(fast), activity_clock([fast], tau), 8)
    f_slow = progress_features(stat(slow), activity_clock([slow], tau), 8)
    np.testing.assert_allclose(f_fast, f_slow, atol=0.05 * np.abs(f_fast).max())
    assert np.abs(stat(fast)[0, 5, 0] - stat(slow)[0, 5, 0]) > 0.05 * np.abs(f_fast).max()
    assert f_fast.shape == (1, len(progress_feature_names(["mean"], 8)))
    del rng


def test_spread_features_invariant_to_unit_and_stimulus_order_and_scale():
    rng = np.random.default_rng(4)
    x, _ = _learning_block(rng, k=24, n=16)
    x = x + 0.1 * rng.normal(size=x.shape)
    f = spread_features(x)
    assert f.shape == (len(spread_feature_names()),) and np.all(np.isfinite(f))
    g = spread_features(3.7 * x[:, rng.permutation(24)][:, :, rng.permutation(16)])
    np.testing.assert_allclose(f, g, rtol=1e-9, atol=1e-9)


def test_spread_tells_even_from_concentrated_change():
    """Change spread over every unit (Adam-like) vs carried by a few units."""
    rng = np.random.default_rng(5)
    base = rng.normal(size=(21, 30, 40))
    base[:] = base[:1]
    even = base + np.linspace(0, 1, 21)[:, None, None] * rng.normal(size=(1, 30, 40))
    few = base.copy()
    few[:, :, :4] += np.linspace(0, 1, 21)[:, None, None] * 3 * rng.normal(size=(1, 30, 4))
    names = spread_feature_names()
    gini = names.index("U_unit_gini_w4")
    assert spread_features(few)[gini] > spread_features(even)[gini] + 0.3


def test_clock_discounts_independent_noise():
    """Noise adds the same floor to every distance from the first session; the clock removes
    it, so a noisy recording keeps (about) the clean recording's clock."""
    rng = np.random.default_rng(6)
    clean, tau = _learning_block(rng, k=64, n=40, speed=0.5)
    noisy = clean + 0.5 * clean.std() * rng.normal(size=clean.shape)
    c_clean, c_noisy = activity_clock([clean], tau), activity_clock([noisy], tau)
    assert np.abs(c_clean - c_noisy).max() < 0.15


def test_feature_rows_with_progress_and_spread_are_invariant():
    from rulefinder.classify.features import area_feature_names, area_feature_rows
    from rulefinder.recording import load_recording

    rec = load_recording("examples/mlp_backprop.npz")
    fs = "stats+change+structure+progress+spread"
    rows = area_feature_rows([rec], n_times=8, feature_set=fs)
    assert rows.sizes["feature"] == len(area_feature_names(8, fs))
    rng = np.random.default_rng(7)
    shuffled = rec.isel(unit=rng.permutation(rec.sizes["unit"]), stimulus=rng.permutation(rec.sizes["stimulus"])) * 5.0
    again = area_feature_rows([shuffled], n_times=8, feature_set=fs)
    dyn = [i for i, n in enumerate(rows.feature.values) if str(n).startswith(("P_", "dP_", "U_"))]
    np.testing.assert_allclose(rows.values[:, dyn], again.values[:, dyn], rtol=1e-6, atol=1e-8)


def test_one_statistics_pass_equals_the_full_reference():
    """The shared pass (time grid + clock levels, only the sessions they read) gives the
    numbers of the plain reference: statistics of every session, area by area."""
    from rulefinder.classify.features import area_feature_rows
    from rulefinder.features.extractor import RecordingArrays, _area_columns
    from rulefinder.features.resample import relative_time
    from rulefinder.features.statistics import STAT_NAMES, session_statistics
    from rulefinder.recording import load_recording
    from rulefinder.recording.model import validate_recording

    rec = validate_recording(load_recording("examples/mlp_backprop.npz"))
    arrays = RecordingArrays.of(rec)
    blocks = [np.asarray(arrays.values[:, :, c], dtype=np.float64) for c in _area_columns(arrays.unit_area, arrays.areas)]
    clock = activity_clock(blocks, relative_time(arrays.session_time))
    reference = progress_features(np.stack([session_statistics(b[None])[0] for b in blocks]), clock, 8)
    rows = area_feature_rows([rec], 8, "progress", validated=True)
    np.testing.assert_allclose(rows.values[:, :-2], reference, rtol=1e-9, atol=1e-12)
    feats, _ = arrays.features_and_statistics(8, [1, 2])
    np.testing.assert_allclose(feats, arrays.features(8), rtol=1e-12, atol=1e-14)
    assert feats.shape == (len(arrays.areas), len(STAT_NAMES), 8)


def test_no_learning_visible_when_change_is_only_session_noise():
    """Negative controls (a frozen network plus noise, pure noise) differ first-to-last no more
    than neighbouring sessions do: no learning is visible and the verdict is unknown; a
    recording that learns is left alone."""
    from rulefinder.classify.evaluate import negative_controls
    from rulefinder.classify.predict import no_learning
    from rulefinder.recording import load_recording

    rec = load_recording("examples/mlp_backprop.npz")
    assert no_learning(rec) is None
    for control in negative_controls(rec, seed=3):
        assert "neighbouring sessions" in (no_learning(control) or "")


def test_no_learning_check_with_most_sessions_unchanged_warns_nothing(recwarn):
    """Most neighbouring sessions identical (the median step is 0) while the first and last
    differ: learning is visible, and no overflow or division warning is raised."""
    from rulefinder.classify.predict import no_learning
    from rulefinder.recording import make_recording

    rng = np.random.default_rng(0)
    base = rng.normal(size=(1, 8, 6))
    values = np.repeat(base, 9, axis=0)
    values[5:] += 1e5 * rng.normal(size=(1, 8, 6))  # one jump, then unchanged again
    rec = make_recording(values, unit_area=np.array(["a"] * 3 + ["b"] * 3), area_order=["a", "b"])
    assert no_learning(rec) is None
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]
