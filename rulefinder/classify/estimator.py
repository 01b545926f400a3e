"""``RuleIdentifier``: recordings -> calibrated rule / family / optimizer probabilities, an
open-set (unknown) score and a verdict.

Model (used by ``rulefinder.classify.predict``, the pipeline and the service; result fields: ``PredictionResult``):

1. Each area of a recording becomes one row of features (:mod:`rulefinder.classify.features`):
   the per-session statistics of :mod:`rulefinder.features` as trajectories over relative
   time, their change from the first session, change-structure numbers
   (:mod:`rulefinder.classify.structure`), the statistics again on the recording's activity
   clock and how change spreads over units and stimuli (:mod:`rulefinder.classify.dynamics`),
   and the area's depth. Every statistic is
   invariant to unit order, stimulus order and the recording's scale, so the model is too.
2. Areas combine by depth (``aggregate="depth"``, the default): one row per recording, the
   features of the output-side area, of the deepest other area and the mean of the other
   areas; per target ``y`` in (rule, family, optimizer) one classifier on these rows gives
   log-probabilities ``l(y)``. (``aggregate="mean"``: one classifier on area rows, and
   ``l(y) = mean_a log p_a(y)`` over the recording's areas.) Calibrated:
   ``p(y) ∝ exp(l(y) / T_y)`` with a temperature ``T_y`` fitted (negative log-likelihood) on
   out-of-fold predictions. ``per_area`` comes from a rule classifier on area rows.
3. Out-of-fold (folds grouped by ``groups``, e.g. zoo shard, so no shard is on both sides)
   predictions also set the open-set score and the verdict thresholds:

   * ``unknown_score = 1 - min(1, 2 min(p_dist, p_conf))``, two conformal p-values of the
     recording against the out-of-fold in-distribution recordings: ``p_dist`` of its
     distance to the training rows, ``p_conf`` of ``1 - max_y p(rule)``. In-distribution
     recordings get ``unknown_score >= 0.95`` about 5 % of the time (at most ~10 %) by
     construction. The distance: a row ``x`` is standardised, ``z = clip((x - mu) / sigma,
     -50, 50)`` (training mean and deviation), and compared with the reference rows ``z_j``
     (at most ``reference_size`` training rows, drawn stratified by rule) reconstructed from
     their first ``n_components`` principal axes ``V`` (orthonormal rows) about their centre
     ``c``, ``r_j = c + V^T V (z_j - c)``: ``d(x) = log1p(mean_j ||z - r_j||)`` over its
     ``n_neighbors`` nearest, computed as ``||z - r_j||^2 = ||V (z - z_j)||^2 + ||(I - V^T V)
     (z - c)||^2`` (the distance within the principal subspace plus the row's residual off
     it, which flags a row unlike the training rows in directions they never vary in). A
     recording's distance is the mean of its rows'. The out-of-fold distances are measured
     the same way against each fold's own reference, so ``p_dist`` stays calibrated whatever
     the cap.
   * ``verdict`` is ``unknown`` when ``unknown_score >= unknown_threshold_``; else
     ``identified`` when the top rule probability reaches ``identified_threshold_``, the
     smallest value at which the out-of-fold top-rule accuracy of the recordings above it
     is at least ``identified_precision``; else ``uncertain``.
   * ``confusable_with``: the other rules whose probability is at least
     ``confusable_ratio`` x the top rule's.

Several recordings of one experiment (``predict_details(..., group=True)``) combine by
summing their calibrated log-probabilities (independent evidence) and renormalising; the
group's unknown score is the mean of its members'.

The fitted object holds only numpy arrays, builtins and scikit-learn estimators, so skops can
save it with :meth:`RuleIdentifier.trusted_types`.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import xarray as xr
from scipy.optimize import minimize_scalar
from scipy.special import expit, logsumexp
from sklearn.base import BaseEstimator, clone
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.extmath import randomized_svd

from rulefinder.classify.features import area_feature_rows

log = logging.getLogger(__name__)

TARGETS: tuple[str, ...] = ("rule", "family", "optimizer")
#: Floor on a probability before its log (a classifier's 0 must not veto a whole recording).
_P_FLOOR = 1e-4
_CLIP = 1e6


def _make_classifier(kind: str, random_state: int, max_iter: int):
    if kind == "hgb":
        return HistGradientBoostingClassifier(
            max_iter=max_iter, learning_rate=0.1, max_leaf_nodes=15, l2_regularization=1.0, random_state=random_state
        )
    if kind == "logreg":
        return make_pipeline(StandardScaler(), LogisticRegression(C=0.05, max_iter=max(max_iter, 500)))
    raise ValueError(f"classifier is {kind!r}: expected 'hgb' or 'logreg'")


def _clean(x: np.ndarray, keep_nan: bool = False) -> np.ndarray:
    """Finite features; NaN (undefined, e.g. no next area) kept for the trees, which route it
    on its own, and 0 for the linear model and the distances."""
    x = np.asarray(x, dtype=np.float64)
    nan = np.isnan(x)
    out = np.clip(np.nan_to_num(x, nan=0.0, posinf=_CLIP, neginf=-_CLIP), -_CLIP, _CLIP)
    if keep_nan and nan.any():
        out[nan] = np.nan
    return out


def _mean_logp(proba: np.ndarray, rec: np.ndarray, n_rec: int) -> np.ndarray:
    """Mean over each recording's area rows of log p; rows are (recording-index) ``rec``."""
    logp = np.log(np.clip(proba, _P_FLOOR, 1.0))
    out = np.zeros((n_rec, proba.shape[1]))
    np.add.at(out, rec, logp)
    counts = np.bincount(rec, minlength=n_rec)
    return out / np.maximum(counts, 1)[:, None]


def _softmax(logits: np.ndarray) -> np.ndarray:
    return np.exp(logits - logsumexp(logits, axis=1, keepdims=True))


def _fit_temperature(logits: np.ndarray, y_idx: np.ndarray) -> float:
    def nll(log_t: float) -> float:
        z = logits / np.exp(log_t)
        return float(-(z[np.arange(len(y_idx)), y_idx] - logsumexp(z, axis=1)).mean())

    res = minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded")
    return float(np.exp(res.x))


def _conformal_p(scores: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Fraction (with the +1 correction) of reference scores at least as large as each score."""
    ref = np.sort(np.asarray(reference, dtype=np.float64))
    n = ref.size
    above = n - np.searchsorted(ref, scores, side="left")
    return (above + 1.0) / (n + 1.0)


def _log_normalise(z: np.ndarray) -> np.ndarray:
    """``z - logsumexp(z)`` per row (scipy's logsumexp costs ~0.5 ms a call in input handling,
    several times a single recording's whole classifier arithmetic)."""
    m = z.max(axis=1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    return z - (m + np.log(np.exp(z - m).sum(axis=1, keepdims=True)))


def _standardise(scaler: StandardScaler, X: np.ndarray) -> np.ndarray:
    """``scaler.transform(X)`` (same operations, same numbers) without scikit-learn's input
    validation, which costs more than the arithmetic for a few rows."""
    if type(scaler) is StandardScaler and scaler.with_mean and scaler.with_std and X.shape[1] == scaler.n_features_in_:
        return (np.asarray(X, dtype=np.float64) - scaler.mean_) / scaler.scale_
    return scaler.transform(X)


def _predict_proba(model, X: np.ndarray) -> np.ndarray:
    """``model.predict_proba(X)``; for the standardised logistic regression of
    ``classifier="logreg"`` the same arithmetic as scikit-learn's (decision function, then
    softmax, or the logistic for two classes) without its per-call validation (~1 ms a call)."""
    if isinstance(model, Pipeline) and len(model.steps) == 2:
        scaler, clf = model.steps[0][1], model.steps[1][1]
        if type(clf) is LogisticRegression and X.shape[1] == clf.coef_.shape[1]:
            d = _standardise(scaler, X) @ clf.coef_.T + clf.intercept_
            if len(clf.classes_) <= 2:
                p = expit(d.ravel())
                return np.vstack([1.0 - p, p]).T
            d -= d.max(axis=1, keepdims=True)
            np.exp(d, out=d)
            d /= d.sum(axis=1, keepdims=True)
            return d
    return model.predict_proba(X)


#: Query rows per block of the nearest-neighbour search (bounds its distance matrix).
_KNN_BLOCK = 1024
#: Rows standardised and projected at a time for the open-set distances (bounds the copies).
_PROJECT_BLOCK = 4096


def _knn_mean_distance(
    z: np.ndarray, ref: np.ndarray, ref_sq: np.ndarray, n_neighbors: int, skip_self, extra_sq: np.ndarray | None = None
) -> np.ndarray:
    """Mean Euclidean distance of each row of ``z`` to its nearest rows of ``ref`` (squared
    norms ``ref_sq``), from one matrix product per block: ``min(n_neighbors + 1, len(ref))``
    nearest are found, then the first dropped (``skip_self``, a bool or one per row of ``z``:
    the row is itself in ``ref``, so its nearest is itself) or the last (when more than one).
    ``extra_sq`` (one per row of ``z``) is added to every squared distance of that row (a
    component orthogonal to all of ``ref``: it does not change which rows are nearest)."""
    k = min(n_neighbors + 1, ref.shape[0])
    skip = np.broadcast_to(np.asarray(skip_self, dtype=bool), (z.shape[0],))
    out = np.empty(z.shape[0])
    for i0 in range(0, z.shape[0], _KNN_BLOCK):
        q = z[i0 : i0 + _KNN_BLOCK]
        d2 = (q * q).sum(axis=1)[:, None] - 2.0 * (q @ ref.T) + ref_sq[None, :]
        np.maximum(d2, 0.0, out=d2)
        near = np.sort(np.partition(d2, k - 1, axis=1)[:, :k] if k < d2.shape[1] else d2, axis=1)
        if extra_sq is not None:
            near += extra_sq[i0 : i0 + _KNN_BLOCK, None]
        dist = np.sqrt(near)
        if k > 1:
            dist = np.where(skip[i0 : i0 + _KNN_BLOCK, None], dist[:, 1:], dist[:, :-1])
        out[i0 : i0 + _KNN_BLOCK] = dist.mean(axis=1)
    return out


def _stratified_rows(labels: np.ndarray, size: int | None, seed: int) -> np.ndarray:
    """Sorted indices of at most ``size`` rows drawn without replacement, each label's share in
    proportion to its count (largest remainders round up) and every label at least one row
    while ``size`` allows; all rows when there are no more than ``size``."""
    n = len(labels)
    if size is None or n <= size:
        return np.arange(n)
    _, inv, counts = np.unique(labels, return_inverse=True, return_counts=True)
    exact = counts * size / n
    alloc = np.floor(exact).astype(int)
    alloc[np.argsort(-(exact - alloc), kind="stable")[: size - alloc.sum()]] += 1
    short = np.flatnonzero(alloc == 0)  # rare labels: one row each, taken from the largest shares
    for j in short[: max(0, size - np.count_nonzero(alloc))]:
        alloc[j] = 1
        alloc[np.argmax(alloc)] -= 1
    rng = np.random.default_rng(seed)
    picks = [rng.choice(np.flatnonzero(inv == c), a, replace=False) for c, a in enumerate(alloc) if a]
    return np.sort(np.concatenate(picks))


class RuleIdentifier(BaseEstimator):
    """Identify the learning rule (and family, optimizer) of recordings.

    Parameters:
        classifier: ``"hgb"`` (histogram gradient boosting) or ``"logreg"`` (standardised
            multinomial logistic regression) on area rows.
        max_iter: boosting iterations (hgb) / solver iterations (logreg).
        n_times: points of the relative-time grid the statistics are resampled onto.
        feature_set: which area features (:func:`rulefinder.classify.features.area_feature_rows`).
        calibration_folds: grouped folds of the out-of-fold pass that fits temperatures and
            thresholds (0 disables it: temperature 1, conformal references from the training
            rows themselves, a weaker choice).
        identified_precision: out-of-fold top-rule accuracy required for ``identified``.
        unknown_level: ``unknown_score`` at or above which the verdict is ``unknown``.
        confusable_ratio: a rule is confusable with the top one when its probability is at
            least this fraction of the top probability.
        n_neighbors: neighbours for the distance part of the unknown score.
        reference_size: at most this many training rows are kept as the open-set reference
            (the out-of-fold calibration pass caps each fold's reference the same way),
            drawn without replacement, stratified by rule (each rule's share in proportion to
            its count, at least one row; seed ``random_state``); ``None`` keeps every row.
        n_components: the reference rows are kept as their coordinates on their first
            ``n_components`` principal axes (at most ``min(n_components, reference_size,
            features)``) and distances measured to their reconstructions (module docstring);
            ``None``: the full standardised rows. With both set the model stores
            ``reference_size x n_components + (n_components + 1) x features`` float32 numbers
            for the open set (4,000 x 32 + 33 x 2,903: 0.9 MB), whatever the training size,
            and a prediction costs one ``features x n_components`` projection plus
            ``reference_size x n_components`` for the neighbours.
        aggregate: how areas combine into a recording: ``"depth"`` one row per recording,
            the output-side area's features, the deepest other area's and the mean of the
            other areas' (areas combined by depth; a single area fills all three), classified
            directly; ``"mean"`` per-area classifiers whose log-probabilities are averaged.
        random_state: seed of the classifiers.
    """

    def __init__(
        self,
        classifier: str = "logreg",
        max_iter: int = 100,
        n_times: int = 8,
        feature_set: str = "stats+change+structure+progress+spread",
        calibration_folds: int = 4,
        identified_precision: float = 0.9,
        unknown_level: float = 0.95,
        confusable_ratio: float = 0.25,
        n_neighbors: int = 5,
        reference_size: int | None = 4000,
        n_components: int | None = 32,
        aggregate: str = "depth",
        random_state: int = 0,
    ):
        self.classifier = classifier
        self.max_iter = max_iter
        self.n_times = n_times
        self.feature_set = feature_set
        self.calibration_folds = calibration_folds
        self.identified_precision = identified_precision
        self.unknown_level = unknown_level
        self.confusable_ratio = confusable_ratio
        self.n_neighbors = n_neighbors
        self.reference_size = reference_size
        self.n_components = n_components
        self.aggregate = aggregate
        self.random_state = random_state

    # --- features -----------------------------------------------------------------------

    def transform(self, recordings: xr.DataArray | Sequence[xr.DataArray], validated: bool = False) -> xr.DataArray:
        """Area rows ``(sample, feature)`` with sample coords ``recording`` (index into the
        input), ``area``, ``depth`` and ``units``. ``validated``: the recordings are
        ``validate_recording``'s output already."""
        if isinstance(recordings, xr.DataArray):
            recordings = [recordings]
        return area_feature_rows(list(recordings), n_times=self.n_times, feature_set=self.feature_set, validated=validated)

    # --- fitting ------------------------------------------------------------------------

    def fit(self, recordings: Sequence[xr.DataArray], labels: Mapping[str, Sequence[str]], groups=None):
        """Fit on recordings with one label per recording and target (``labels`` has keys
        ``rule``, ``family``, ``optimizer``); ``groups`` (one per recording, e.g. the zoo shard)
        keeps related recordings on one side of the calibration folds."""
        recordings = list(recordings)
        self._check_labels(labels, len(recordings), groups)  # before the costly features
        return self.fit_features(self.transform(recordings), labels, groups)

    @staticmethod
    def _check_labels(labels: Mapping[str, Sequence[str]], n_rec: int, groups) -> None:
        missing = [t for t in TARGETS if t not in labels]
        if missing:
            raise ValueError(f"labels lacks {missing}: expected keys {list(TARGETS)}")
        for t in TARGETS:
            n = len(labels[t])
            if n != n_rec:
                raise ValueError(f"labels[{t!r}] has {n} values: expected one per recording ({n_rec})")
        if groups is not None and len(groups) != n_rec:
            raise ValueError(f"groups has {len(groups)} values: expected one per recording ({n_rec})")

    def fit_features(self, rows: xr.DataArray, labels: Mapping[str, Sequence[str]], groups=None):
        """:meth:`fit` on area rows from :meth:`transform` (lets evaluation featurise once)."""
        rec = np.asarray(rows.coords["recording"].values, dtype=int)
        n_rec = int(rec.max()) + 1 if rec.size else 0
        self._check_labels(labels, n_rec, groups)
        y = {t: np.asarray(labels[t]).astype(str) for t in TARGETS}
        groups = np.arange(n_rec) if groups is None else np.asarray(groups)
        if self.aggregate not in ("depth", "mean"):
            raise ValueError(f"aggregate is {self.aggregate!r}: expected 'depth' or 'mean'")
        area_X = _clean(rows.values, keep_nan=self.classifier == "hgb")
        self.feature_names_ = [str(f) for f in rows.coords["feature"].values]
        self.n_features_in_ = area_X.shape[1]
        X, rec = self._design(area_X, rec, rows.coords["depth"].values, n_rec)
        self.classes_ = {t: np.unique(y[t]) for t in TARGETS}
        if len(self.classes_["rule"]) < 2:
            raise ValueError(f"labels['rule'] has one class {self.classes_['rule'].tolist()}: expected at least 2")

        # Out-of-fold pass: temperatures, conformal references, verdict thresholds.
        n_groups = len(np.unique(groups))
        folds = min(self.calibration_folds, n_groups)
        oof_logits = {t: np.zeros((n_rec, len(self.classes_[t]))) for t in TARGETS}
        oof_dist = np.zeros(n_rec)
        if folds >= 2:
            for tr_rec, te_rec in GroupKFold(folds).split(np.zeros(n_rec), groups=groups):
                tr = np.isin(rec, tr_rec)
                te = np.isin(rec, te_rec)
                models = self._fit_models(X[tr], {t: y[t][rec[tr]] for t in TARGETS})
                local = np.searchsorted(te_rec, rec[te])
                for t in TARGETS:
                    oof_logits[t][te_rec] = self._logits(models[t], X[te], local, len(te_rec), t)
                scaler, projection, reference, _ = self._fit_neighbors(X[tr], y["rule"][rec[tr]])
                oof_dist[te_rec] = self._distance(scaler, projection, reference, X[te], local, len(te_rec))
            self.temperature_ = {
                t: _fit_temperature(oof_logits[t], np.searchsorted(self.classes_[t], y[t])) for t in TARGETS
            }
        else:
            self.temperature_ = {t: 1.0 for t in TARGETS}

        self.estimators_ = self._fit_models(X, {t: y[t][rec] for t in TARGETS})
        # per-area rule probabilities (the result's per_area) need a model on area rows
        area_rec = np.asarray(rows.coords["recording"].values, dtype=int)
        self.area_estimator_ = (
            self.estimators_["rule"]
            if self.aggregate == "mean"
            else self._fit_models(area_X, {t: y[t][area_rec] for t in TARGETS}, targets=("rule",))["rule"]
        )
        self.scaler_, projection, reference, keep = self._fit_neighbors(X, y["rule"][rec])
        # float32 on disk (distances move by ~1e-7 relative); the size is bounded by
        # reference_size x n_components + n_components x features, whatever the training size.
        self.components_mean_, self.components_ = (a if a is None else a.astype(np.float32) for a in projection or (None, None))
        self.reference_ = reference.astype(np.float32)
        self.__dict__.pop("_reference_cache", None)
        if folds < 2:  # no held-out pass: references from the training recordings themselves
            for t in TARGETS:
                oof_logits[t] = self._logits(self.estimators_[t], X, rec, n_rec, t)
            in_ref = np.zeros(X.shape[0], dtype=bool)
            in_ref[keep] = True
            oof_dist = self._distance(self.scaler_, projection, reference, X, rec, n_rec, skip_self=in_ref)

        p_rule = _softmax(oof_logits["rule"] / self.temperature_["rule"])
        conf = 1.0 - p_rule.max(axis=1)
        self.reference_distance_ = np.sort(oof_dist)
        self.reference_uncertainty_ = np.sort(conf)
        top = self.classes_["rule"][p_rule.argmax(axis=1)]
        self.identified_threshold_ = self._precision_threshold(p_rule.max(axis=1), top == y["rule"])
        self.unknown_threshold_ = float(self.unknown_level)
        self.oof_rule_accuracy_ = float(np.mean(top == y["rule"]))
        self.n_recordings_ = n_rec
        return self

    def _precision_threshold(self, top_p: np.ndarray, correct: np.ndarray) -> float:
        order = np.argsort(-top_p)
        hits = np.cumsum(correct[order]) / np.arange(1, len(order) + 1)
        ok = np.flatnonzero(hits >= self.identified_precision)
        # Need a handful of recordings above the threshold for it to mean anything.
        ok = ok[ok >= min(9, len(order) - 1)]
        if ok.size == 0:
            return 1.0 + 1e-9  # never identified: the model is not precise enough anywhere
        return float(top_p[order][ok.max()])

    def _design(self, X: np.ndarray, rec: np.ndarray, depth: np.ndarray, n_rec: int) -> tuple[np.ndarray, np.ndarray]:
        """The classifier's rows and the recording of each: area rows (``mean``) or one row
        per recording (``depth``: output-side area, deepest other area, mean of the others)."""
        if self.aggregate == "mean":
            return X, rec
        out = np.zeros((n_rec, 3 * X.shape[1]))
        for i in range(n_rec):
            m = np.flatnonzero(rec == i)
            order = m[np.argsort(depth[m], kind="stable")]
            hidden = order[:-1] if len(order) > 1 else order
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # a feature NaN in every area
                mean = np.nanmean(X[hidden], axis=0)
            out[i] = np.concatenate([X[order[-1]], X[hidden[-1]], mean])
        return out, np.arange(n_rec)

    def _fit_models(self, X: np.ndarray, y: dict[str, np.ndarray], targets: Sequence[str] = TARGETS) -> dict:
        dead = np.isnan(X).all(axis=0)
        if dead.any():  # a feature never defined in this training set (trees cannot bin it)
            X = X.copy()
            X[:, dead] = 0.0
        models = {}
        for t in targets:
            seen = np.unique(y[t])
            if seen.size < 2:  # one class in this training set: a constant answer
                models[t] = {"constant": str(seen[0])}
                continue
            model = _make_classifier(self.classifier, self.random_state, self.max_iter)
            models[t] = clone(model).fit(X, y[t])
        return models

    def _full_proba(self, model, X: np.ndarray, target: str) -> np.ndarray:
        """Area probabilities in ``classes_[target]`` order (a class missing from the model's
        training set gets the floor)."""
        full = np.full((X.shape[0], len(self.classes_[target])), _P_FLOOR)
        if isinstance(model, dict):
            full[:, np.searchsorted(self.classes_[target], model["constant"])] = 1.0
            return full
        full[:, np.searchsorted(self.classes_[target], model.classes_)] = _predict_proba(model, X)
        return full

    def _logits(self, model, X: np.ndarray, rec: np.ndarray, n_rec: int, target: str) -> np.ndarray:
        """Mean area log-probabilities in ``classes_[target]`` order."""
        return _mean_logp(self._full_proba(model, X, target), rec, n_rec)

    def _fit_neighbors(self, X: np.ndarray, labels: np.ndarray) -> tuple[StandardScaler, tuple | None, np.ndarray, np.ndarray]:
        """The open-set reference of the distance part of the unknown score, from design rows
        ``X`` with rule ``labels``: the scaler, the projection ``(centre, axes)`` (``None``: the
        full standardised space), the projected reference rows (at most ``reference_size``,
        stratified by rule) and their indices into ``X``."""
        scaler = StandardScaler().fit(_clean(X))
        keep = _stratified_rows(labels, self.reference_size, self.random_state)
        z = self._standardised(scaler, X[keep])
        if self.n_components is None:
            return scaler, None, z, keep
        centre = z.mean(axis=0)
        z -= centre
        k = min(int(self.n_components), *z.shape)
        _, _, axes = randomized_svd(z, k, n_iter=5, random_state=self.random_state)
        return scaler, (centre, axes), z @ axes.T, keep

    @staticmethod
    def _standardised(scaler: StandardScaler, X: np.ndarray) -> np.ndarray:
        return np.clip(_standardise(scaler, _clean(X)), -50, 50)

    def _distance(self, scaler, projection, reference, X, rec, n_rec, skip_self=False, ref_sq=None) -> np.ndarray:
        """Mean over each recording's rows of ``log1p`` of the mean distance to the nearest
        ``n_neighbors`` reference rows, measured in the full standardised space to the
        reference rows' projections: squared distance within the projected space plus the
        row's squared residual off it (standardised and projected in blocks, so a large ``X``
        needs no full-size copies)."""
        if ref_sq is None:
            ref_sq = (reference * reference).sum(axis=1)
        skip = np.broadcast_to(np.asarray(skip_self, dtype=bool), (X.shape[0],))
        per_row = np.empty(X.shape[0])
        for i0 in range(0, X.shape[0], _PROJECT_BLOCK):
            z = self._standardised(scaler, X[i0 : i0 + _PROJECT_BLOCK])
            residual_sq = None
            if projection is not None:
                centre, axes = projection
                z -= centre
                u = z @ axes.T
                residual_sq = np.maximum((z * z).sum(axis=1) - (u * u).sum(axis=1), 0.0)
                z = u
            d = _knn_mean_distance(z, reference, ref_sq, self.n_neighbors, skip[i0 : i0 + _PROJECT_BLOCK], residual_sq)
            per_row[i0 : i0 + _PROJECT_BLOCK] = np.log1p(d)
        out = np.zeros(n_rec)
        np.add.at(out, rec, per_row)
        return out / np.maximum(np.bincount(rec, minlength=n_rec), 1)

    def _neighbour_reference(self) -> tuple[tuple | None, np.ndarray, np.ndarray]:
        """The projection ``(centre, axes)``, the reference rows in float64 and their squared norms, made once per
        loaded model (not saved: see ``__getstate__``). Older models: no ``components_`` (the
        reference is the standardised training rows themselves), or before ``reference_``
        (float32) a fitted ``NearestNeighbors`` in ``neighbors_``."""
        cached = self.__dict__.get("_reference_cache")
        if cached is None:
            ref = self.reference_ if hasattr(self, "reference_") else self.neighbors_._fit_X
            ref = np.ascontiguousarray(ref, dtype=np.float64)
            projection = None
            if getattr(self, "components_", None) is not None:
                projection = tuple(np.ascontiguousarray(a, dtype=np.float64) for a in (self.components_mean_, self.components_))
            cached = self.__dict__["_reference_cache"] = (projection, ref, (ref * ref).sum(axis=1))
        return cached

    def __getstate__(self):
        state = super().__getstate__()
        state.pop("_reference_cache", None)
        return state

    def __setstate__(self, state):
        # A model saved before the bounded reference kept every training row, unprojected:
        # what None means for both parameters.
        super().__setstate__({"reference_size": None, "n_components": None, **state})

    # --- prediction ---------------------------------------------------------------------

    def _check_fitted(self) -> None:
        if not hasattr(self, "estimators_"):
            raise RuntimeError("RuleIdentifier is not fitted: call fit() first")

    def predict_proba(self, recordings) -> dict[str, np.ndarray]:
        """Per target, ``(n_recordings, n_classes)`` calibrated probabilities in ``classes_``
        order."""
        if isinstance(recordings, xr.DataArray):
            recordings = [recordings]
        return self.predict_proba_features(self.transform(list(recordings)))

    def _calibrated_logp(self, rows: _Rows) -> tuple[dict[str, np.ndarray], np.ndarray]:
        self._check_fitted()
        area_X = _clean(rows.values, keep_nan=self.classifier == "hgb")
        if area_X.shape[1] != self.n_features_in_:
            raise ValueError(f"features have {area_X.shape[1]} columns: expected {self.n_features_in_}")
        X, rec = self._design(area_X, rows.rec, rows.depth, rows.n_rec)
        out = {}
        for t in TARGETS:
            z = self._logits(self.estimators_[t], X, rec, rows.n_rec, t) / self.temperature_[t]
            out[t] = _log_normalise(z)
        return out, area_X

    def predict_proba_features(self, rows: xr.DataArray) -> dict[str, np.ndarray]:
        logp, _ = self._calibrated_logp(_Rows.of(rows))
        return {t: np.exp(v) for t, v in logp.items()}

    def predict(self, recordings) -> np.ndarray:
        """Top rule per recording."""
        p = self.predict_proba(recordings)["rule"]
        return self.classes_["rule"][p.argmax(axis=1)]

    def unknown_scores_features(self, rows: xr.DataArray, p_rule: np.ndarray | None = None) -> np.ndarray:
        """``unknown_score`` per recording (see the module docstring)."""
        return self._unknown_scores(_Rows.of(rows), p_rule)

    def _unknown_scores(self, rows: _Rows, p_rule: np.ndarray | None = None) -> np.ndarray:
        if p_rule is None:
            p_rule = np.exp(self._calibrated_logp(rows)[0]["rule"])
        X, rec = self._design(_clean(rows.values), rows.rec, rows.depth, rows.n_rec)
        projection, reference, ref_sq = self._neighbour_reference()
        dist = self._distance(self.scaler_, projection, reference, X, rec, rows.n_rec, ref_sq=ref_sq)
        p_dist = _conformal_p(dist, self.reference_distance_)
        p_conf = _conformal_p(1.0 - p_rule.max(axis=1), self.reference_uncertainty_)
        return np.clip(1.0 - np.minimum(1.0, 2.0 * np.minimum(p_dist, p_conf)), 0.0, 1.0)

    def predict_details(self, recordings, group: bool = False, validated: bool = False) -> list[dict]:
        """One dict per recording (or one for the whole group) with the fields of
        ``PredictionResult`` except ``model``, ``expected_accuracy``, ``noise``,
        ``n_recordings`` and ``top_*``."""
        if isinstance(recordings, xr.DataArray):
            recordings = [recordings]
        return self.predict_details_features(self.transform(list(recordings), validated=validated), group=group)

    def predict_details_features(self, rows: xr.DataArray, group: bool = False) -> list[dict]:
        rows = _Rows.of(rows)
        n_rec = rows.n_rec
        logp, X = self._calibrated_logp(rows)
        unknown = self._unknown_scores(rows, np.exp(logp["rule"]))
        area_p = self._area_rule_proba(X)
        per_area = [[] for _ in range(n_rec)]
        for i, r in enumerate(rows.rec.tolist()):
            per_area[r].append(
                {
                    "area": str(rows.area[i]),
                    "units": int(rows.units[i]),
                    "depth": float(rows.depth[i]) if rows.depth_known[i] else None,
                    "rule_probabilities": self._as_dict("rule", area_p[i]),
                }
            )
        if group:
            summed = {t: logp[t].sum(axis=0, keepdims=True) for t in TARGETS}
            logp = {t: _log_normalise(v) for t, v in summed.items()}
            unknown = np.array([float(unknown.mean())])
            notes = [f"{n_rec} recordings combined into one verdict (evidence summed)"] if n_rec > 1 else []
            per_area = [[dict(a, area=f"recording {r}: {a['area']}") for r in range(n_rec) for a in per_area[r]]]
            return [self._details(logp, 0, float(unknown[0]), per_area[0], notes)]
        return [self._details(logp, i, float(unknown[i]), per_area[i], []) for i in range(n_rec)]

    def _area_rule_proba(self, X: np.ndarray) -> np.ndarray:
        full = self._full_proba(self.area_estimator_, X, "rule")
        return full / full.sum(axis=1, keepdims=True)

    def _as_dict(self, target: str, p: np.ndarray) -> dict[str, float]:
        p = np.asarray(p, dtype=np.float64)
        p = p / p.sum()
        return {str(c): float(v) for c, v in zip(self.classes_[target], p, strict=True)}

    def _details(self, logp, i: int, unknown: float, per_area: list, warnings: list[str]) -> dict:
        p_rule = np.exp(logp["rule"][i])
        order = np.argsort(-p_rule)
        top_p = float(p_rule[order[0]])
        confusable = [
            str(self.classes_["rule"][j]) for j in order[1:] if p_rule[j] >= self.confusable_ratio * top_p
        ]
        if unknown >= self.unknown_threshold_:
            verdict = "unknown"
        elif top_p >= self.identified_threshold_:
            verdict = "identified"
        else:
            verdict = "uncertain"
        return {
            "rule_probabilities": self._as_dict("rule", p_rule),
            "family_probabilities": self._as_dict("family", np.exp(logp["family"][i])),
            "optimizer_probabilities": self._as_dict("optimizer", np.exp(logp["optimizer"][i])),
            "per_area": per_area,
            "unknown_score": float(np.clip(unknown, 0.0, 1.0)),
            "verdict": verdict,
            "confusable_with": confusable,
            "warnings": list(warnings),
        }

    # --- persistence --------------------------------------------------------------------

    @classmethod
    def trusted_types(cls) -> list[str]:
        """Fully-qualified type names skops must trust to load a fitted ``RuleIdentifier``."""
        return list(TRUSTED_TYPES)


@dataclass(frozen=True)
class _Rows:
    """The arrays of area rows (:meth:`RuleIdentifier.transform`) prediction reads, taken out
    of the DataArray once (each coordinate access costs ~0.1 ms in xarray)."""

    values: np.ndarray
    rec: np.ndarray
    n_rec: int
    depth: np.ndarray
    depth_known: np.ndarray
    area: np.ndarray
    units: np.ndarray

    @classmethod
    def of(cls, rows: xr.DataArray) -> _Rows:
        coords = rows.coords
        rec = np.asarray(coords["recording"].values, dtype=int)
        n = len(rec)
        return cls(
            values=rows.values,
            rec=rec,
            n_rec=int(rec.max()) + 1 if rec.size else 0,
            depth=np.asarray(coords["depth"].values, dtype=np.float64),
            depth_known=np.asarray(coords["depth_known"].values) if "depth_known" in coords else np.ones(n),
            area=np.asarray(coords["area"].values) if "area" in coords else np.full(n, ""),
            units=np.asarray(coords["units"].values) if "units" in coords else np.zeros(n, dtype=int),
        )


TRUSTED_TYPES: tuple[str, ...] = (
    "rulefinder.classify.estimator.RuleIdentifier",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
)
