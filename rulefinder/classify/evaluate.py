"""Honest evaluation of :class:`RuleIdentifier` on a zoo store: every split grouped so that no
shard is on both sides, thresholds never set on a test fold, learned networks in the headline.

``evaluate(store, out_dir)`` writes ``metrics.json``, ``report.html`` and PNG figures and
returns the metrics. Splits (names in ``SPLITS``):

* ``lofo_arch``: leave-one-architecture-family-out (a shard has one architecture family);
  its pooled out-of-fold predictions give the ECE (top label, 15 bins), top-3 accuracy, the
  confusion matrix, the reliability diagram and the confusable pairs.
* ``lofo_task``: leave-one-task-out.
* ``lovo_variant``: fold k holds out variant k of every rule (:func:`variant_folds`: the
  variant's index among its rule's variants, ``default`` first; only when the store has more
  than one variant, ``None`` otherwise).
* ``loro``: leave-one-range-out for each per-shard hyperparameter in ``LORO_HYPERPARAMETERS``:
  shards are cut into ``RANGE_BINS`` bins by the value's quantiles, each fold holds out one
  bin (a range the training set never saw).
* ``lofo_family``: open set. For family F the model is fitted on half of the other families'
  shards (``GroupKFold(2)`` by shard); the unknown score's AUROC separates F's recordings
  (positives) from the other half's (negatives).
* ``grid``: virtual experiments units per area x sessions x noise on the ``lofo_arch`` test
  networks (at most ``grid_networks`` of them, spread evenly over rules), each fold's model
  fitted on its training networks' plain recordings plus ``augment`` virtual draws per
  network (random units, sessions and noise: so the model has seen degraded recordings); given
  ``train_rows`` (the pipeline's stored rows), the ``lofo_arch`` fold models themselves.
* ``performance_matched``: on the ``lofo_arch`` out-of-fold predictions, each learned test
  network (anchor) is joined by, for every other rule, the learned test network of the same
  fold whose test-accuracy trajectory (on relative time, 11 points) is nearest in L2; the
  balanced accuracy over that matched multiset, where learning speed no longer tells the
  rules apart. ``rule_bacc_performance_only`` is the same split's accuracy of a classifier
  that sees only the accuracy trajectory (how much learning speed alone gives).
* ``controls``: for networks of the ``lofo_arch`` test folds, two negative controls per
  network: its first checkpoint repeated in every session plus moderate noise, and pure
  Gaussian noise of the same shape. ``controls_unknown_rate`` is the fraction with verdict
  ``unknown`` (as ``predict_recordings`` gives it: ``unknown`` also when no learning is
  visible, :func:`rulefinder.classify.predict.no_learning`).

Headline numbers count only ``learned`` networks; ``*_not_learned`` keys report the rest.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import xarray as xr
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import balanced_accuracy_score, confusion_matrix, roc_auc_score, roc_curve
from sklearn.model_selection import GroupKFold
from tqdm.auto import tqdm

from rulefinder.classify.cache import network_rows
from rulefinder.classify.dataset import network_table
from rulefinder.classify.estimator import TARGETS, RuleIdentifier
from rulefinder.classify.features import area_feature_names, area_feature_rows
from rulefinder.features import canonical_grid
from rulefinder.features.resample import resample
from rulefinder.recording.model import make_recording
from rulefinder.virtual import VirtualExperiment

log = logging.getLogger(__name__)

SPLITS: tuple[str, ...] = (
    "lofo_arch",
    "lofo_task",
    "lovo_variant",
    "loro",
    "lofo_family",
    "grid",
    "performance_matched",
    "controls",
)
HEADLINE_SPLITS: tuple[str, ...] = ("lofo_arch", "lofo_task", "lofo_family", "controls")
GRID_UNITS: tuple[int | str, ...] = (10, 30, 100, "all")
GRID_SESSIONS: tuple[int, ...] = (3, 5, 10, 21)
GRID_NOISE: tuple[str, ...] = ("none", "moderate", "high")
RANGE_BINS = 3
#: Per-shard hyperparameters held out by range (training length, batch size, input scale).
LORO_HYPERPARAMETERS: tuple[str, ...] = ("epochs", "batch_size", "input_scale")
ECE_BINS = 15


# --- metrics ------------------------------------------------------------------------------


def ece_top_label(proba: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> float:
    """Expected calibration error of the top label, equal-width bins on [0, 1]."""
    conf = proba.max(axis=1)
    idx = np.minimum((conf * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            total += m.mean() * abs(correct[m].mean() - conf[m].mean())
    return float(total)


def _bacc(y: np.ndarray, pred: np.ndarray, weight: np.ndarray | None = None) -> float | None:
    if len(y) == 0:
        return None
    return float(balanced_accuracy_score(y, pred, sample_weight=weight))


def _top_k(proba: np.ndarray, classes: np.ndarray, y: np.ndarray, k: int) -> float | None:
    if len(y) == 0:
        return None
    top = classes[np.argsort(-proba, axis=1)[:, :k]]
    return float(np.mean([yi in row for yi, row in zip(y, top, strict=True)]))


def _round(v):
    if isinstance(v, float):
        return None if math.isnan(v) else round(v, 4)
    if isinstance(v, dict):
        return {k: _round(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_round(x) for x in v]
    return v


# --- one split ----------------------------------------------------------------------------


class _OOF:
    """Pooled out-of-fold predictions of one split, in the global class order."""

    def __init__(self, n: int, classes: dict[str, np.ndarray]):
        self.classes = classes
        self.proba = {t: np.full((n, len(c)), np.nan) for t, c in classes.items()}
        self.unknown = np.full(n, np.nan)
        self.verdict = np.full(n, "", dtype=object)
        self.confusable = [[] for _ in range(n)]
        self.fold = np.full(n, -1)
        # the network's rule was in its fold's training set (a rule never trained on cannot be
        # named; recognising it as new is the open-set split's job)
        self.eligible = np.zeros(n, bool)
        self.models: list[tuple[np.ndarray, RuleIdentifier]] = []

    @property
    def seen(self) -> np.ndarray:
        return self.fold >= 0


def _subset_rows(rows: xr.DataArray, idx: np.ndarray) -> xr.DataArray:
    """Rows of recordings ``idx`` (positions), renumbered 0..len(idx)-1 in that order."""
    rec = rows.coords["recording"].values
    pos = {int(r): i for i, r in enumerate(idx)}
    keep = np.isin(rec, idx)
    sub = rows.isel(sample=np.flatnonzero(keep))
    new = np.array([pos[int(r)] for r in sub.coords["recording"].values], dtype=int)
    order = np.argsort(new, kind="stable")
    sub = sub.isel(sample=order)
    return sub.assign_coords(recording=("sample", new[order]))


def _labels(table: xr.Dataset, idx: np.ndarray) -> dict[str, np.ndarray]:
    return {t: table[t].values[idx].astype(str) for t in TARGETS}


def _training_set(rows, table, idx, extra=None):
    """Rows, labels and groups to fit on networks ``idx`` (plus ``extra``: rows and network
    positions of more recordings of those networks, which share their network's shard so
    calibration folds stay grouped)."""
    sub = _subset_rows(rows, idx)
    labels, groups = _labels(table, idx), table["shard"].values[idx]
    if extra is not None:
        x_rows, x_net = extra
        xi = np.flatnonzero(np.isin(x_net, idx))
        if xi.size:
            aug = _subset_rows(x_rows, xi)
            aug = aug.assign_coords(recording=("sample", aug.coords["recording"].values + len(idx)))
            sub = xr.concat([sub, aug], dim="sample")
            labels = {t: np.concatenate([labels[t], table[t].values[x_net[xi]].astype(str)]) for t in TARGETS}
            groups = np.concatenate([groups, table["shard"].values[x_net[xi]]])
    return sub, labels, groups


def _fit(rows, table, idx, params, extra=None) -> RuleIdentifier:
    """Fit on networks ``idx`` (plus ``extra``, see :func:`_training_set`)."""
    return RuleIdentifier(**params).fit_features(*_training_set(rows, table, idx, extra))


def _fit_job(sub, labels, groups, params) -> tuple[RuleIdentifier, float]:
    """One fold's fit, and the CPU seconds it took (in whichever process ran it)."""
    t0 = time.process_time()
    model = RuleIdentifier(**params).fit_features(sub, labels, groups)
    return model, time.process_time() - t0


def fit_many(rows, table, jobs: Sequence[tuple], n_jobs: int = 1, progress: bool = False) -> tuple[list, float]:
    """The fold models of ``jobs`` (``(network positions, params, extra)`` each), in that
    order, and their summed CPU seconds. With ``n_jobs > 1`` the fits run in that many worker
    processes (joblib's loky), one BLAS/OpenMP thread each so they do not oversubscribe the
    cores; the largest fits start first so the last worker is not left with a big one."""
    if n_jobs <= 1 or len(jobs) <= 1:
        done = [_fit_job(*_training_set(rows, table, idx, extra), params)
                for idx, params, extra in tqdm(jobs, desc="fits", disable=not progress, leave=False)]
    else:
        from joblib import Parallel, delayed, parallel_config

        order = sorted(range(len(jobs)), key=lambda j: -len(jobs[j][0]))
        calls = (delayed(_fit_job)(*_training_set(rows, table, jobs[j][0], jobs[j][2]), jobs[j][1]) for j in order)
        with parallel_config(backend="loky", inner_max_num_threads=1):
            results = Parallel(n_jobs=min(n_jobs, len(jobs)), pre_dispatch="n_jobs")(calls)
        done = [None] * len(jobs)
        for j, r in zip(order, results, strict=True):
            done[j] = r
    return [m for m, _ in done], float(sum(c for _, c in done))


def uncalibrated(params: dict) -> dict:
    """``params`` without the estimator's out-of-fold calibration pass. That pass sets the
    temperatures, conformal references and verdict thresholds and never the classifiers
    themselves, and a temperature does not move the argmax: a split that reports only
    balanced accuracies gets the same predictions at about a third of the fit."""
    return {**params, "calibration_folds": 0}


def _predict_into(oof: _OOF, model: RuleIdentifier, rows, idx, fold: int) -> None:
    sub = _subset_rows(rows, idx)
    proba = model.predict_proba_features(sub)
    details = model.predict_details_features(sub)
    for t in TARGETS:
        cols = np.searchsorted(oof.classes[t], model.classes_[t])
        full = np.zeros((len(idx), len(oof.classes[t])))
        full[:, cols] = proba[t]
        oof.proba[t][idx] = full
    oof.unknown[idx] = [d["unknown_score"] for d in details]
    oof.verdict[idx] = [d["verdict"] for d in details]
    for i, d in zip(idx, details, strict=True):
        oof.confusable[i] = d["confusable_with"]
    oof.fold[idx] = fold


def split_folds(table: xr.Dataset, fold_of: np.ndarray, train_mask=None) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """``(k, test positions, train positions)`` of each fold of ``fold_of`` (one label per
    network, ``""`` = never tested) that has a test network and at least two training rules."""
    n = table.sizes["sample"]
    train_ok = np.ones(n, bool) if train_mask is None else train_mask
    out = []
    for k, f in enumerate(f for f in np.unique(fold_of) if f != ""):
        test = np.flatnonzero(fold_of == f)
        train = np.flatnonzero((fold_of != f) & train_ok)
        if len(np.unique(table["rule"].values[train])) < 2 or len(test) == 0:
            continue
        out.append((k, test, train))
    return out


def assemble_split(rows, table, classes, folds, models) -> _OOF:
    """Out-of-fold predictions of ``folds`` (from :func:`split_folds`) by their fitted models."""
    oof = _OOF(table.sizes["sample"], classes)
    for (k, test, _), model in zip(folds, models, strict=True):
        _predict_into(oof, model, rows, test, k)
        oof.eligible[test] = np.isin(table["rule"].values[test], model.classes_["rule"])
        oof.models.append((test, model))
    return oof


def run_split(rows, table, fold_of: np.ndarray, params: dict, classes, train_mask=None, progress=False, extra=None) -> _OOF:
    """Out-of-fold predictions for folds given by ``fold_of`` (one label per network;
    ``""`` = never tested). ``train_mask`` limits which networks may be trained on."""
    folds = split_folds(table, fold_of, train_mask)
    models, _ = fit_many(rows, table, [(train, params, extra) for _, _, train in folds], progress=progress)
    return assemble_split(rows, table, classes, folds, models)


def split_metrics(oof: _OOF, table: xr.Dataset, name: str) -> dict:
    """Balanced accuracies (learned headline, the rest apart) of one split, over test networks
    whose rule the fold's model was trained on."""
    out: dict = {}
    learned = np.asarray(table["learned"].values, bool)
    missing = sorted(set(table["rule"].values[oof.seen & ~oof.eligible].tolist()))
    if missing:
        out[f"rules_untrained_{name}"] = missing
    for subset, mask in (("", learned), ("_not_learned", ~learned)):
        m = oof.seen & oof.eligible & mask
        for t in TARGETS:
            y = table[t].values[m].astype(str)
            pred = oof.classes[t][oof.proba[t][m].argmax(axis=1)] if m.any() else np.array([])
            out[f"{t}_bacc_{name}{subset}"] = _bacc(y, pred)
        out[f"n_test_{name}{subset}"] = int(m.sum())
    return out


# --- folds --------------------------------------------------------------------------------


def variant_folds(table: xr.Dataset) -> np.ndarray:
    """Per network, ``v<k>``: the index of its variant among its rule's variants (``default``
    first, then by name), so fold k holds out variant k of every rule and trains on the rest."""
    rules = table["rule"].values.astype(str)
    variants = table["variant"].values.astype(str)
    out = np.empty(rules.size, dtype=object)
    for r in np.unique(rules):
        m = rules == r
        names = sorted(set(variants[m].tolist()), key=lambda v: (v != "default", v))
        out[m] = [f"v{names.index(v)}" for v in variants[m]]
    return out


def shard_bins(table: xr.Dataset, column: str, bins: int = RANGE_BINS) -> np.ndarray:
    """Per network, the range bin (``"lo"``, ``"mid"``, ``"hi"``...) of its shard's value of
    ``column`` (quantiles over shards), ``""`` where it is missing or constant."""
    vals = np.asarray(table[column].values, dtype=np.float64)
    shards = table["shard"].values
    _, first = np.unique(shards, return_index=True)
    shard_vals = vals[first]
    shard_vals = shard_vals[np.isfinite(shard_vals)]
    if np.unique(shard_vals).size < 2:
        return np.full(len(vals), "", dtype=object)
    edges = np.unique(np.quantile(shard_vals, np.linspace(0, 1, bins + 1)[1:-1]))
    out = np.full(len(vals), "", dtype=object)
    ok = np.isfinite(vals)
    out[ok] = [f"bin{int(b)}" for b in np.searchsorted(edges, vals[ok], side="right")]
    return out


# --- virtual experiments ------------------------------------------------------------------


def grid_experiment(units, sessions: int, noise: str, seed: int) -> VirtualExperiment:
    steps: list[dict] = []
    if units != "all":
        steps.append({"op": "keep_units", "n": int(units), "per_area": True})
    steps.append({"op": "keep_sessions", "n": int(sessions), "mode": "even"})
    steps.append({"op": "gaussian_noise", "snr": noise})
    return VirtualExperiment(steps, seed)


def augment_experiment(rng: np.random.Generator) -> VirtualExperiment:
    """A random degraded view (units, sessions, noise from the grid's ranges) for training."""
    units = int(rng.choice([10, 30, 100, 1000]))
    sessions = int(rng.choice([3, 5, 10, 21]))
    noise = str(rng.choice(GRID_NOISE))
    return grid_experiment(units, sessions, noise, int(rng.integers(2**31)))


def _spread(idx: np.ndarray, labels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Up to ``n`` of ``idx``, spread evenly over ``labels``' classes."""
    if len(idx) <= n:
        return idx
    classes = np.unique(labels[idx])
    per = max(1, n // len(classes))
    picks = [rng.permutation(idx[labels[idx] == c])[:per] for c in classes]
    return np.sort(np.concatenate(picks))


# --- performance ---------------------------------------------------------------------------


def accuracy_trajectories(store, table: xr.Dataset, n_times: int = 11) -> np.ndarray:
    """Each network's test accuracy over relative time, ``(network, n_times)``."""
    out = np.full((table.sizes["sample"], n_times), np.nan)
    where = {nid: i for i, nid in enumerate(table["network"].values.tolist())}
    for shard in np.unique(table["shard"].values):
        ds = store.dataset(str(shard))
        ids = [str(v) for v in np.asarray(ds["network_id"].values).tolist()]
        acc = np.asarray(ds["accuracy"].values, dtype=np.float64)
        st = np.asarray(ds["session_time"].values, dtype=np.float64)
        ncp = np.asarray(ds["n_checkpoints"].values) if "n_checkpoints" in ds else np.full(len(ids), acc.shape[1])
        for j, nid in enumerate(ids):
            if nid in where:
                c = int(ncp[j])
                out[where[nid]] = resample(acc[j, :c][None, :, None], st[j, :c], n_times)[0, 0]
    return out


def matched_weights(traj: np.ndarray, rules: np.ndarray, folds: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """Multiplicity of each network in the performance-matched test multiset."""
    w = np.zeros(len(rules))
    for a in np.flatnonzero(ok):
        w[a] += 1
        for r in np.unique(rules[ok]):
            if r == rules[a]:
                continue
            cand = np.flatnonzero(ok & (rules == r) & (folds == folds[a]))
            if cand.size:
                d = np.nansum((traj[cand] - traj[a]) ** 2, axis=1)
                w[cand[np.argmin(d)]] += 1
    return w


# --- controls -------------------------------------------------------------------------------


def negative_controls(rec: xr.DataArray, seed: int) -> list[xr.DataArray]:
    """The first checkpoint repeated in every session + moderate noise; pure noise."""
    rng = np.random.default_rng(seed)
    first = np.repeat(rec.values[:1].astype(np.float64), rec.sizes["session"], axis=0)
    frozen = make_recording(
        first,
        session_time=rec.coords["session_time"].values,
        unit_area=rec.coords["unit_area"].values,
        area_order=rec.attrs.get("area_order"),
        source="control:first-checkpoint",
    )
    frozen = VirtualExperiment([{"op": "gaussian_noise", "snr": "moderate"}], seed).apply(frozen)
    noise = make_recording(
        rng.standard_normal(rec.shape),
        session_time=rec.coords["session_time"].values,
        unit_area=rec.coords["unit_area"].values,
        area_order=rec.attrs.get("area_order"),
        source="control:noise",
    )
    return [frozen, noise]


# --- figures and report ---------------------------------------------------------------------


def _figures(out: Path, figs: dict, grid=(GRID_UNITS, GRID_SESSIONS, GRID_NOISE)) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = []
    if "confusion" in figs:
        classes, cm = figs["confusion"]
        size = max(5.5, 2.5 + 0.4 * len(classes))
        fig, ax = plt.subplots(figsize=(size, size))
        norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
        ax.imshow(norm, vmin=0, vmax=1, cmap="viridis")
        ax.set_xticks(range(len(classes)), classes, rotation=90, fontsize=7)
        ax.set_yticks(range(len(classes)), classes, fontsize=7)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title("rule, lofo arch (learned)", fontsize=9)
        fig.tight_layout()
        fig.savefig(out / "confusion_rule_lofo_arch.png", dpi=110)
        plt.close(fig)
        names.append("confusion_rule_lofo_arch.png")
    if "reliability" in figs:
        conf, correct = figs["reliability"]
        edges = np.linspace(0, 1, ECE_BINS + 1)
        idx = np.minimum((conf * ECE_BINS).astype(int), ECE_BINS - 1)
        xs = [conf[idx == b].mean() for b in range(ECE_BINS) if (idx == b).any()]
        ys = [correct[idx == b].mean() for b in range(ECE_BINS) if (idx == b).any()]
        fig, ax = plt.subplots(figsize=(4, 4))
        ax.plot([0, 1], [0, 1], "k--", lw=1)
        ax.plot(xs, ys, "o-")
        ax.set_xlabel("top-rule probability")
        ax.set_ylabel("accuracy")
        ax.set_xlim(edges[0], edges[-1])
        ax.set_title("reliability (lofo arch)")
        fig.tight_layout()
        fig.savefig(out / "reliability.png", dpi=110)
        plt.close(fig)
        names.append("reliability.png")
    if "grid" in figs:
        cells = figs["grid"]
        units_, sessions_, noise_ = grid
        fig, axes = plt.subplots(1, len(noise_), figsize=(4 * len(noise_), 3.4), sharey=True, squeeze=False)
        for ax, noise in zip(axes[0], noise_, strict=True):
            for units in units_:
                ys = [
                    next((c["rule_accuracy"] for c in cells if (c["units"], c["sessions"], c["noise"]) == (units, s, noise)), None)
                    for s in sessions_
                ]
                ax.plot(list(sessions_), [np.nan if y is None else y for y in ys], "o-", label=f"units {units}")
            ax.set_title(f"noise {noise}")
            ax.set_xlabel("sessions")
            ax.set_xscale("log")
            ax.set_xticks(list(sessions_), [str(x) for x in sessions_])
            ax.minorticks_off()
        axes[0][0].set_ylabel("rule balanced accuracy")
        axes[0][0].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "accuracy_grid.png", dpi=110)
        plt.close(fig)
        names.append("accuracy_grid.png")
    if "roc" in figs:
        fig, ax = plt.subplots(figsize=(4.5, 4.5))
        for fam, (fpr, tpr, auc) in figs["roc"].items():
            ax.plot(fpr, tpr, label=f"{fam} {auc:.2f}")
        ax.plot([0, 1], [0, 1], "k--", lw=1)
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.set_title("unknown score, held-out family")
        ax.legend(fontsize=6)
        fig.tight_layout()
        fig.savefig(out / "unknown_roc.png", dpi=110)
        plt.close(fig)
        names.append("unknown_roc.png")
    return names


def _html(metrics: dict, images: list[str]) -> str:
    rows = "".join(
        f"<tr><td>{k}</td><td>{json.dumps(v) if not isinstance(v, (dict, list)) else '<code>' + json.dumps(v)[:400] + '</code>'}</td></tr>"
        for k, v in metrics.items()
    )
    imgs = "".join(f'<figure><img src="{n}" alt="{n}"><figcaption>{n}</figcaption></figure>' for n in images)
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>rulefinder evaluation</title>"
        "<style>body{font-family:sans-serif;margin:2em}td{padding:2px 8px;border-bottom:1px solid #ddd;"
        "vertical-align:top}code{font-size:11px}img{max-width:100%}</style></head><body>"
        f"<h1>rulefinder evaluation</h1><p>store: {metrics.get('store')}</p>"
        "<p>All splits grouped by shard; headline numbers on learned networks only.</p>"
        f"<table>{rows}</table>{imgs}</body></html>"
    )


# --- the whole evaluation -------------------------------------------------------------------


def evaluate(
    store,
    out_dir: str | Path,
    splits: Sequence[str] = SPLITS,
    params: dict | None = None,
    cache_dir: str | Path | None = None,
    grid_networks: int = 60,
    augment: int = 1,
    control_networks: int = 20,
    grid: tuple[Sequence, Sequence, Sequence] = (GRID_UNITS, GRID_SESSIONS, GRID_NOISE),
    seed: int = 0,
    progress: bool = True,
    train_rows: xr.DataArray | None = None,
    n_jobs: int = 1,
) -> dict:
    """Run the ``splits`` on ``store`` (a ZooStore or its URL) and write the report into
    ``out_dir``; returns the metrics dict (also ``metrics.json``). ``grid`` is (units per area,
    sessions, noise levels) of the virtual-experiment grid; it is scored on at most
    ``grid_networks`` held-out networks, one draw per network and cell.

    ``train_rows``: feature rows as the pipeline's features stage stores them
    (:func:`rulefinder.store.features.read_features`: one sample per area, coordinates
    ``network`` and ``virtual``). Given them, every fold model is fitted the way the model
    being evaluated was: on its training networks' stored rows (each network as recorded plus
    its stored virtual draws), and tested on the held-out networks as recorded; the grid is
    scored by the ``lofo_arch`` fold models themselves (``augment`` is not used). Networks
    without stored rows as recorded are tested (their rows computed) but never trained on.

    ``n_jobs``: fold fits run in that many worker processes. Splits that report balanced
    accuracies only fit without the estimator's calibration pass (:func:`uncalibrated`).
    ``metrics["timing"]`` says where the seconds went.
    """
    t0 = time.time()
    timing: dict = {}
    if isinstance(store, (str, Path)):
        from rulefinder.store import ZooStore

        store = ZooStore.open(str(store))
    bad = [s for s in splits if s not in SPLITS]
    if bad:
        raise ValueError(f"splits {bad} unknown: expected some of {list(SPLITS)}")
    params = dict(params or {})
    est = RuleIdentifier(**params)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)

    table = network_table(store)
    n = table.sizes["sample"]
    if n == 0:
        raise ValueError(f"{store.url}: no complete networks to evaluate")
    ids = table["network"].values.tolist()
    trainable, fold_extra = None, None
    if train_rows is not None:
        rows, trainable, fold_extra = _stored_rows(store, ids, train_rows, est, cache_dir, progress)
    else:
        rows = network_rows(store, ids, est.n_times, est.feature_set, cache_dir, progress)
    classes = {t: np.unique(table[t].values.astype(str)) for t in TARGETS}
    learned = np.asarray(table["learned"].values, bool)
    metrics: dict = {
        "store": str(store.url),
        "n_rules": int(len(classes["rule"])),
        "n_networks": int(n),
        "n_learned": int(learned.sum()),
        "n_shards": int(len(np.unique(table["shard"].values))),
        "networks_per_rule": {str(r): int((table["rule"].values == r).sum()) for r in classes["rule"]},
        "estimator": est.get_params(),
    }
    if train_rows is not None:
        metrics["fold_training"] = "stored rows (as recorded + stored virtual draws)"
    figs: dict = {}

    aug_extra = None
    if augment and "grid" in splits and train_rows is None:
        aug_extra = _augmented_rows(store, table, ids, est, augment, rng, progress)
    timing["rows_s"] = round(time.time() - t0, 1)

    # Every fold of every split, fitted together (in n_jobs processes), then scored.
    arch_labels = table["arch_family"].values.astype(object)
    calibrated, plain = params, uncalibrated(params)
    plans: dict[str, tuple[list, dict, tuple | None]] = {}
    if any(s in splits for s in ("lofo_arch", "performance_matched", "controls", "grid")):
        plans["lofo_arch"] = (split_folds(table, arch_labels, trainable), calibrated, fold_extra)
    if "lofo_task" in splits:
        plans["lofo_task"] = (split_folds(table, table["task"].values.astype(object), trainable), plain, fold_extra)
    variants = np.unique(table["variant"].values)
    if "lovo_variant" in splits and variants.size > 1:
        plans["lovo_variant"] = (split_folds(table, variant_folds(table), trainable), plain, fold_extra)
    if "loro" in splits:
        for hp in LORO_HYPERPARAMETERS:
            bins = shard_bins(table, hp)
            if (bins != "").any():
                plans[f"loro_{hp}"] = (split_folds(table, bins, trainable), plain, fold_extra)
    if "grid" in splits and aug_extra is not None:
        plans["lofo_arch_augmented"] = (split_folds(table, arch_labels, trainable), plain, aug_extra)
    open_folds = open_set_folds(table, trainable) if "lofo_family" in splits else []
    jobs = [(train, p, x) for folds, p, x in plans.values() for _, _, train in folds]
    jobs += [(train, calibrated, fold_extra) for _, train, _, _ in open_folds]
    t1 = time.time()
    models, fit_cpu = fit_many(rows, table, jobs, n_jobs, progress)
    timing.update(fits=len(jobs), fit_cpu_s=round(fit_cpu, 1), fits_s=round(time.time() - t1, 1), n_jobs=int(n_jobs))
    it = iter(models)
    oofs = {name: assemble_split(rows, table, classes, folds, [next(it) for _ in folds])
            for name, (folds, _, _) in plans.items()}
    open_models = [next(it) for _ in open_folds]

    arch = oofs.get("lofo_arch")
    if arch is not None:
        metrics.update(split_metrics(arch, table, "lofo_arch"))
        m = arch.seen & arch.eligible & learned
        y = table["rule"].values[m].astype(str)
        p = arch.proba["rule"][m]
        if m.any():
            pred = classes["rule"][p.argmax(axis=1)]
            metrics["rule_top3_lofo_arch"] = _top_k(p, classes["rule"], y, 3)
            metrics["ece"] = ece_top_label(p, pred == y)
            metrics["verdicts_lofo_arch"] = {v: int((arch.verdict[m] == v).sum()) for v in ("identified", "uncertain", "unknown")}
            ident = arch.verdict[m] == "identified"
            metrics["identified_accuracy_lofo_arch"] = float((pred == y)[ident].mean()) if ident.any() else None
            metrics["nayebi4_bacc_lofo_arch"] = _nayebi(table, arch, m, classes)
            cm = confusion_matrix(y, pred, labels=classes["rule"])
            figs["confusion"] = (classes["rule"], cm)
            figs["reliability"] = (p.max(axis=1), pred == y)
            metrics["confusable_pairs_lofo_arch"] = _confusable_pairs(classes["rule"], cm)
            metrics["per_rule_recall_lofo_arch"] = {
                str(c): float(cm[i, i] / cm[i].sum()) if cm[i].sum() else None for i, c in enumerate(classes["rule"])
            }

    if "lofo_task" in oofs:
        metrics.update(split_metrics(oofs["lofo_task"], table, "lofo_task"))

    if "lovo_variant" in splits:
        if "lovo_variant" in oofs:
            metrics.update(split_metrics(oofs["lovo_variant"], table, "lovo_variant"))
        else:
            metrics["rule_bacc_lovo_variant"] = None
            metrics["lovo_variant_note"] = f"store has one variant ({variants.tolist()}): split not defined"

    for hp in LORO_HYPERPARAMETERS:
        if f"loro_{hp}" in oofs:
            metrics[f"rule_bacc_loro_{hp}"] = split_metrics(oofs[f"loro_{hp}"], table, f"loro_{hp}")[f"rule_bacc_loro_{hp}"]

    if "lofo_family" in splits:
        metrics.update(open_set_metrics(rows, table, open_folds, open_models, figs))

    if "performance_matched" in splits and arch is not None:
        traj = accuracy_trajectories(store, table)
        ok = arch.seen & arch.eligible & learned
        w = matched_weights(traj, table["rule"].values, arch.fold, ok)
        y = table["rule"].values.astype(str)
        pred = classes["rule"][np.nan_to_num(arch.proba["rule"]).argmax(axis=1)]
        sel = w > 0
        metrics["rule_bacc_performance_matched"] = _bacc(y[sel], pred[sel], w[sel])
        metrics["rule_bacc_performance_only"] = _performance_only(traj, table, learned)
        metrics["performance_matched_ratio"] = (
            metrics["rule_bacc_performance_matched"] / metrics["rule_bacc_lofo_arch"]
            if metrics.get("rule_bacc_lofo_arch") and metrics["rule_bacc_performance_matched"] is not None
            else None
        )

    if "controls" in splits and arch is not None:
        t1 = time.time()
        metrics.update(_controls(store, table, arch, control_networks, rng))
        timing["controls_s"] = round(time.time() - t1, 1)

    if "grid" in splits:
        t1 = time.time()
        grid_oof = oofs.get("lofo_arch_augmented", arch)
        if "lofo_arch_augmented" in oofs:
            metrics["rule_bacc_lofo_arch_augmented"] = split_metrics(grid_oof, table, "lofo_arch")["rule_bacc_lofo_arch"]
        cells = expected_accuracy_grid(store, table, grid_oof, grid_networks, rng, grid, progress)
        metrics["grid"] = cells
        figs["grid"] = cells
        cell = next((c for c in cells if c["units"] == 100 and c["sessions"] == 5 and c["noise"] == "moderate"), None)
        metrics["rule_bacc_u100_s5_moderate"] = cell["rule_accuracy"] if cell else None
        timing["grid_s"] = round(time.time() - t1, 1)

    metrics["seconds"] = round(time.time() - t0, 1)
    metrics["timing"] = timing
    metrics = _round(metrics)
    images = _figures(out, figs, grid)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    (out / "report.html").write_text(_html(metrics, images))
    return metrics


#: The coordinates a row set carries through evaluation (what :func:`network_rows` gives).
_ROW_COORDS = ("area", "depth", "depth_known", "units")


def _bare_rows(rows: xr.DataArray, recording: np.ndarray) -> xr.DataArray:
    coords = {"feature": rows.coords["feature"].values, "recording": ("sample", np.asarray(recording, dtype=int))}
    coords.update({c: ("sample", rows.coords[c].values) for c in _ROW_COORDS})
    return xr.DataArray(rows.values, dims=("sample", "feature"), coords=coords)


def _stored_rows(store, ids: list, train_rows: xr.DataArray, est: RuleIdentifier, cache_dir, progress):
    """From the stored feature rows: the rows as recorded of every network in ``ids``
    (``recording`` = position in ``ids``; computed for networks the rows lack), which networks
    may be trained on (those with stored rows as recorded), and the stored virtual draws as
    ``(rows, network position of each)``."""
    expected = area_feature_names(est.n_times, est.feature_set)
    found = [str(f) for f in train_rows.coords["feature"].values]
    if found != list(expected):
        raise ValueError(
            f"train_rows: {len(found)} features that are not those of feature_set {est.feature_set!r} "
            f"with n_times {est.n_times} ({len(expected)} features): rows made with other estimator parameters"
        )
    for c in ("network", "virtual", "recording", *_ROW_COORDS):
        if c not in train_rows.coords:
            raise ValueError(f"train_rows: coordinate {c!r} missing: expected the features stage's rows (read_features)")
    where = {nid: i for i, nid in enumerate(ids)}
    pos = np.array([where.get(str(v), -1) for v in train_rows.coords["network"].values], dtype=int)
    virtual = np.asarray(train_rows.coords["virtual"].values).astype(str) != ""
    rec = np.asarray(train_rows.coords["recording"].values, dtype=int)

    as_recorded = np.flatnonzero(~virtual & (pos >= 0))
    parts = [_bare_rows(train_rows.isel(sample=as_recorded), pos[as_recorded])]
    trainable = np.zeros(len(ids), bool)
    trainable[pos[as_recorded]] = True
    missing = np.flatnonzero(~trainable)
    if missing.size:
        computed = network_rows(store, [ids[i] for i in missing], est.n_times, est.feature_set, cache_dir, progress)
        parts.append(_bare_rows(computed, missing[computed.coords["recording"].values]))
    rows = xr.concat(parts, dim="sample") if len(parts) > 1 else parts[0]
    rows = rows.isel(sample=np.argsort(rows.coords["recording"].values, kind="stable"))

    draws = np.flatnonzero(virtual & (pos >= 0))
    _, first, local = np.unique(rec[draws], return_index=True, return_inverse=True)
    extra = (_bare_rows(train_rows.isel(sample=draws), local), pos[draws][first])
    return rows, trainable, extra


def _nayebi(table, oof: _OOF, m: np.ndarray, classes) -> float | None:
    """Balanced accuracy over Nayebi et al.'s four classes (backprop-adam, backprop-momentum,
    feedback alignment, information alignment = ...) where the zoo has them: networks of the
    two backprop cells and of feedback_alignment, classes read from our rule x optimizer."""
    rule, opt = table["rule"].values.astype(str), table["optimizer"].values.astype(str)

    def four(r, o):
        if r == "backprop" and o in ("adam", "momentum"):
            return f"backprop-{o}"
        if r == "feedback_alignment":
            return "feedback_alignment"
        return ""

    y = np.array([four(r, o) for r, o in zip(rule, opt, strict=True)])
    keep = m & (y != "")
    if len(np.unique(y[keep])) < 2:
        return None
    pr = classes["rule"][oof.proba["rule"].argmax(axis=1)]
    po = classes["optimizer"][oof.proba["optimizer"].argmax(axis=1)]
    pred = np.array([four(r, o) or "other" for r, o in zip(pr, po, strict=True)])
    return _bacc(y[keep], pred[keep])


def _confusable_pairs(classes: np.ndarray, cm: np.ndarray, min_rate: float = 0.2) -> list[dict]:
    """Rule pairs confused with each other at >= ``min_rate`` of the true rule's networks."""
    rates = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    pairs = []
    for i in range(len(classes)):
        for j in range(len(classes)):
            if i != j and rates[i, j] >= min_rate:
                pairs.append({"true": str(classes[i]), "predicted": str(classes[j]), "rate": float(rates[i, j])})
    return sorted(pairs, key=lambda p: -p["rate"])


def open_set_folds(table: xr.Dataset, train_mask=None) -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
    """``(family, train, positives, negatives)`` per held-out family F: the model is fitted on
    half of the other families' shards (``GroupKFold(2)`` by shard; of those, the networks
    ``train_mask`` allows), F's networks are the positives, the other half the negatives."""
    fam = table["family"].values.astype(str)
    shards = table["shard"].values
    out = []
    for f in np.unique(fam):
        others = np.flatnonzero(fam != f)
        if len(np.unique(table["rule"].values[others])) < 2 or len(np.unique(shards[others])) < 2:
            continue
        tr_pos, te_pos = next(GroupKFold(2).split(others, groups=shards[others]))
        train, neg = others[tr_pos], others[te_pos]
        if train_mask is not None:
            train = train[train_mask[train]]
        if len(np.unique(table["rule"].values[train])) < 2:
            continue
        out.append((f, train, np.flatnonzero(fam == f), neg))
    return out


def open_set_metrics(rows, table, folds, models, figs) -> dict:
    """The unknown score's AUROC per held-out family (:func:`open_set_folds`)."""
    aucs: dict[str, float] = {}
    roc: dict = {}
    for (f, _, pos, neg), model in zip(folds, models, strict=True):
        sub = _subset_rows(rows, np.concatenate([pos, neg]))
        score = model.unknown_scores_features(sub)
        y = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
        if len(np.unique(y)) == 2:
            aucs[f] = float(roc_auc_score(y, score))
            fpr, tpr, _ = roc_curve(y, score)
            roc[f] = (fpr, tpr, aucs[f])
    figs["roc"] = roc
    vals = list(aucs.values())
    return {
        "unknown_auroc_lofo_family": aucs,
        "unknown_auroc_lofo_family_mean": float(np.mean(vals)) if vals else None,
        "unknown_auroc_lofo_family_min": float(np.min(vals)) if vals else None,
    }


def _performance_only(traj: np.ndarray, table, learned) -> float | None:
    """Rule from the test-accuracy trajectory alone, leave-one-arch-family-out."""
    arch = table["arch_family"].values.astype(str)
    y = table["rule"].values.astype(str)
    hits_y, hits_p = [], []
    for a in np.unique(arch):
        tr, te = arch != a, (arch == a) & learned
        if len(np.unique(y[tr])) < 2 or not te.any():
            continue
        clf = HistGradientBoostingClassifier(max_iter=100, random_state=0).fit(traj[tr], y[tr])
        hits_y.append(y[te])
        hits_p.append(clf.predict(traj[te]))
    if not hits_y:
        return None
    return _bacc(np.concatenate(hits_y), np.concatenate(hits_p))


def _controls(store, table, arch: _OOF, n_networks: int, rng) -> dict:
    from rulefinder.classify.predict import no_learning

    tested = np.flatnonzero(arch.seen)
    pick = _spread(tested, table["rule"].values, n_networks, rng)
    verdicts, scores = [], []
    for test, model in arch.models:
        mine = pick[np.isin(pick, test)]
        recs = []
        for i in mine:
            recs += negative_controls(store.recording(str(table["network"].values[i])), int(rng.integers(2**31)))
        if not recs:
            continue
        details = model.predict_details_features(area_feature_rows(recs, model.n_times, model.feature_set))
        # As predict_recordings does: no learning visible -> unknown.
        verdicts += ["unknown" if no_learning(r) else d["verdict"] for d, r in zip(details, recs, strict=True)]
        scores += [d["unknown_score"] for d in details]
    v = np.asarray(verdicts)
    return {
        "controls_unknown_rate": float((v == "unknown").mean()) if v.size else None,
        "controls_n": int(v.size),
        "controls_unknown_score_mean": float(np.mean(scores)) if scores else None,
    }


def _augmented_rows(store, table, ids, est: RuleIdentifier, augment: int, rng, progress):
    """Rows of ``augment`` random degraded views per network, and each one's network."""
    recs, net = [], []
    for i, nid in enumerate(tqdm(ids, desc="augment", disable=not progress, leave=False)):
        rec = store.recording(nid)
        for _ in range(augment):
            recs.append(augment_experiment(rng).apply(rec))
            net.append(i)
    return area_feature_rows(recs, est.n_times, est.feature_set), np.asarray(net)


def expected_accuracy_grid(
    store, table, oof: _OOF, grid_networks: int, rng, grid=(GRID_UNITS, GRID_SESSIONS, GRID_NOISE), progress=False
) -> list[dict]:
    """Rule balanced accuracy per (units per area, sessions, noise) cell, on learned held-out
    networks of ``oof``'s folds (at most ``grid_networks``, spread over rules), each predicted
    by the fold model that did not see it. One dict per cell: ``units``, ``sessions``,
    ``noise``, ``rule_accuracy``, ``n`` and ``areas_full`` (the fraction of those networks
    whose every area had at least ``units`` units)."""
    learned = np.asarray(table["learned"].values, bool)
    tested = np.flatnonzero(oof.seen & oof.eligible & learned)
    pick = _spread(tested, table["rule"].values, grid_networks, rng)
    recs = {int(i): store.recording(str(table["network"].values[i])) for i in pick}
    cells = []
    combos = [(u, s, z) for u in grid[0] for s in grid[1] for z in grid[2]]
    for units, sessions, noise in tqdm(combos, desc="grid", disable=not progress, leave=False):
        ys, ps = [], []
        n_full = 0
        for test, model in oof.models:
            mine = pick[np.isin(pick, test)]
            if mine.size == 0:
                continue
            views = [grid_experiment(units, sessions, noise, int(rng.integers(2**31))).apply(recs[int(i)]) for i in mine]
            if units != "all":
                n_full += sum(
                    int(all((v.coords["unit_area"].values == a).sum() >= units for a in v.attrs.get("area_order", [])))
                    for v in views
                )
            p = model.predict_proba_features(area_feature_rows(views, model.n_times, model.feature_set))["rule"]
            ys.append(table["rule"].values[mine].astype(str))
            ps.append(model.classes_["rule"][p.argmax(axis=1)])
        if not ys:
            continue
        y, pr = np.concatenate(ys), np.concatenate(ps)
        cells.append(
            {
                "units": units,
                "sessions": sessions,
                "noise": noise,
                "rule_accuracy": _bacc(y, pr),
                "n": int(len(y)),
                # units != "all": the fraction of networks whose every area had that many units
                "areas_full": None if units == "all" else round(n_full / len(y), 3),
            }
        )
    return cells
