"""The open-set reference of RuleIdentifier (issue #9): bounded by ``reference_size`` x
``n_components`` whatever the training size, without effect on the rule probabilities, and
models saved before it still load and score the same. Tiny synthetic data: seconds."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from sklearn.neighbors import NearestNeighbors

from rulefinder.classify.estimator import RuleIdentifier, _knn_mean_distance, _stratified_rows
from rulefinder.classify.registry import ModelRegistry, write_model
from tests.model_fixtures import synthetic_recording, tiny_card, tiny_dataset

PARAMS = {"classifier": "logreg", "calibration_folds": 3, "n_times": 4}


@pytest.fixture(scope="module")
def data():
    recs, labels, groups = tiny_dataset()
    est = RuleIdentifier(**PARAMS)
    return est.transform(recs), labels, groups


@pytest.fixture(scope="module")
def queries():
    recs = [synthetic_recording(i % 3, i % 2, 700 + i) for i in range(5)]
    noise = np.abs(np.random.default_rng(1).normal(size=recs[0].shape))
    recs.append(recs[0].copy(data=noise))
    return RuleIdentifier(**PARAMS).transform(recs)


def _fit(data, **kw):
    rows, labels, groups = data
    return RuleIdentifier(**PARAMS, **kw).fit_features(rows, labels, groups)


def test_reference_rows_and_components_are_capped(data):
    rows, labels, _ = data
    n = len(labels["rule"])
    est = _fit(data, reference_size=12, n_components=4)
    assert est.reference_.shape == (12, 4) and est.reference_.dtype == np.float32
    assert est.components_.shape == (4, 3 * rows.sizes["feature"]) and est.components_.dtype == np.float32
    v = est.components_.astype(np.float64)
    np.testing.assert_allclose(v @ v.T, np.eye(4), atol=1e-5)  # orthonormal principal axes
    assert len(est.reference_distance_) == n  # the calibration still sees every recording
    full = _fit(data, reference_size=None, n_components=None)
    assert full.reference_.shape == (n, 3 * rows.sizes["feature"]) and full.components_ is None
    # more components than reference rows: as many as the rows allow
    assert _fit(data, reference_size=5, n_components=64).reference_.shape == (5, 5)
    # no calibration pass: the distances of the training rows themselves, each kept row's
    # own zero distance left out
    rows, labels, groups = data
    est = RuleIdentifier(**{**PARAMS, "calibration_folds": 0}, reference_size=12, n_components=4)
    est.fit_features(rows, labels, groups)
    assert len(est.reference_distance_) == n and np.all(est.reference_distance_ > 0)


def test_distance_is_to_the_reference_rows_reconstructions(data, queries):
    """d = log1p(mean over the nearest reference rows of ||z - r_j||), r_j = c + V^T u_j."""
    from rulefinder.classify.estimator import _Rows

    est = _fit(data, reference_size=12, n_components=4)
    rows = _Rows.of(queries)
    X, rec = est._design(queries.values, rows.rec, rows.depth, rows.n_rec)
    z = est._standardised(est.scaler_, X)
    recon = est.components_mean_.astype(np.float64) + est.reference_.astype(np.float64) @ est.components_.astype(np.float64)
    d = np.sqrt(((z[:, None, :] - recon[None]) ** 2).sum(axis=2))
    want = np.log1p(np.sort(d, axis=1)[:, : est.n_neighbors].mean(axis=1))
    got = est._distance(est.scaler_, est._neighbour_reference()[0], est._neighbour_reference()[1], X, rec, rows.n_rec)
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_the_reference_changes_only_the_unknown_score(data, queries):
    small = _fit(data, reference_size=12, n_components=4)
    full = _fit(data, reference_size=None, n_components=None)
    a, b = small.predict_proba_features(queries), full.predict_proba_features(queries)
    for t in a:
        np.testing.assert_array_equal(a[t], b[t])
    assert small.identified_threshold_ == full.identified_threshold_
    assert small.temperature_ == full.temperature_
    u = small.unknown_scores_features(queries)
    assert u.shape == (6,) and np.all((u >= 0) & (u <= 1))
    assert u[-1] >= 0.9  # pure noise stays far from every reference row


def test_stratified_rows_keep_every_rule_in_proportion():
    labels = np.array(["a"] * 90 + ["b"] * 9 + ["c"] * 1)
    idx = _stratified_rows(labels, 20, seed=0)
    assert len(idx) == 20 and len(np.unique(idx)) == 20 and np.all(np.diff(idx) > 0)
    got = {c: int((labels[idx] == c).sum()) for c in "abc"}
    assert got == {"a": 17, "b": 2, "c": 1}
    np.testing.assert_array_equal(idx, _stratified_rows(labels, 20, seed=0))
    assert not np.array_equal(idx, _stratified_rows(labels, 20, seed=1))
    np.testing.assert_array_equal(_stratified_rows(labels, None, 0), np.arange(100))
    np.testing.assert_array_equal(_stratified_rows(labels, 100, 0), np.arange(100))


def test_knn_skips_itself_only_for_rows_in_the_reference():
    rng = np.random.default_rng(0)
    ref, q = rng.normal(size=(30, 3)), rng.normal(size=(4, 3))
    z = np.vstack([ref[:2], q])
    skip = np.array([True, True, False, False, False, False])
    got = _knn_mean_distance(z, ref, (ref * ref).sum(axis=1), 3, skip)
    np.testing.assert_allclose(got[:2], _knn_mean_distance(ref[:2], ref, (ref * ref).sum(axis=1), 3, True))
    np.testing.assert_allclose(got[2:], _knn_mean_distance(q, ref, (ref * ref).sum(axis=1), 3, False))


def test_a_model_saved_before_the_bounded_reference_loads_and_scores_the_same(tmp_path, data, queries):
    """Older files lack ``reference_size``, ``n_components`` and ``components_``: they held
    every training row in the full standardised space, which is what None means."""
    full = _fit(data, reference_size=None, n_components=None)
    want = full.unknown_scores_features(queries)
    old = _fit(data, reference_size=None, n_components=None)
    for attr in ("reference_size", "n_components", "components_", "components_mean_"):
        delattr(old, attr)
    old.__dict__.pop("_reference_cache", None)
    write_model(tmp_path / "packaged" / "default", old, tiny_card(old, name="default"))
    loaded = ModelRegistry(tmp_path / "models", packaged_dir=tmp_path / "packaged").load("default").estimator
    assert loaded.get_params()["reference_size"] is None and loaded.get_params()["n_components"] is None
    assert not hasattr(loaded, "components_")
    np.testing.assert_allclose(loaded.unknown_scores_features(queries), want, atol=1e-6)
    # before ``reference_`` (float32): a fitted NearestNeighbors in ``neighbors_``
    older = copy.deepcopy(loaded)
    older.neighbors_ = NearestNeighbors(n_neighbors=older.n_neighbors + 1).fit(older.reference_.astype(np.float64))
    del older.reference_
    older.__dict__.pop("_reference_cache", None)
    np.testing.assert_allclose(older.unknown_scores_features(queries), want, atol=1e-6)
