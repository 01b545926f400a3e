"""The driver-side stages after the zoo: fit, evaluate, register.

They only call :mod:`rulefinder.classify`: the estimator (``RuleIdentifier.fit_features`` on
the rows the features stage stored), the evaluation, and the model registry with a
:class:`~rulefinder.classify.card.ModelCard`. The fitted estimator is kept in ``<out>/model``
(the registry's own format: skops + card) so that ``register`` and a later ``--resume`` need
not fit again.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.config import PipelineConfig

log = logging.getLogger(__name__)

TARGETS = ("rule", "family", "optimizer")


@dataclass
class StageContext:
    config: PipelineConfig
    store_url: str
    out: Path
    name: str
    replace: bool = False
    storage_options: dict | None = None
    progress: bool = False
    state: dict[str, Any] = field(default_factory=dict)


def training_rows(ctx: StageContext):
    """The stored feature rows to fit on, and one label set and group per recording."""
    from rulefinder.store.features import read_features

    rows = read_features(ctx.store_url, storage_options=ctx.storage_options)
    if ctx.config.fit.learned_only and "learned" in rows.coords:
        rows = rows.isel(sample=np.asarray(rows.coords["learned"].values, dtype=bool))
    # Renumber the recordings 0..R-1 in order of first appearance (what fit_features expects).
    rec = np.asarray(rows.coords["recording"].values, dtype=int)
    uniq, first, inverse = np.unique(rec, return_index=True, return_inverse=True)
    order = np.argsort(first)
    remap = np.empty_like(order)
    remap[order] = np.arange(order.size)
    rows = rows.assign_coords(recording=("sample", remap[inverse]))
    firsts = first[order]
    labels = {t: np.asarray(rows.coords[t].values).astype(str)[firsts] for t in TARGETS}
    groups = np.asarray(rows.coords["shard"].values).astype(str)[firsts]
    networks = np.unique(np.asarray(rows.coords["network"].values).astype(str))
    return rows, labels, groups, networks


def fit(ctx: StageContext) -> dict:
    from rulefinder.classify.estimator import RuleIdentifier

    rows, labels, groups, networks = training_rows(ctx)
    est = RuleIdentifier(**ctx.config.fit.params)
    est.fit_features(rows, labels, groups)
    ctx.state["estimator"] = est
    ctx.state["rows"] = rows  # the evaluation's fold models train on the same rows
    ctx.state["n_networks"] = int(networks.size)
    ctx.state["n_shards"] = int(np.unique(groups).size)
    ctx.state["n_samples"] = len(labels["rule"])
    pairs = {(str(n), str(r)) for n, r in zip(rows.coords["network"].values, rows.coords["rule"].values, strict=True)}
    per_rule: dict[str, int] = {}
    for _, r in pairs:
        per_rule[r] = per_rule.get(r, 0) + 1
    ctx.state["rules"] = dict(sorted(per_rule.items()))
    return {
        "networks": int(networks.size), "recordings": len(labels["rule"]), "rows": int(rows.sizes["sample"]),
        "rules": len(est.classes_["rule"]), "oof_rule_accuracy": round(float(est.oof_rule_accuracy_), 4),
    }


def evaluate(ctx: StageContext) -> dict:
    """:func:`rulefinder.classify.evaluate.evaluate` on the store with the fit's estimator
    parameters: the config's splits (default: the headline splits plus the expected-accuracy
    grid the card needs).

    The fold models are fitted as the shipped model was, on the features stage's stored rows
    (``train_rows``: each network as recorded plus its virtual draws; nothing is featurised
    again), and the folds of every split are fitted together in one worker process per core
    of this machine (``evaluate.options.n_jobs`` overrides)."""
    from rulefinder.classify import evaluate as evaluation
    from rulefinder.store import ZooStore

    cfg = ctx.config.evaluate
    out_dir = ctx.out / "evaluation"
    splits = list(cfg.splits) if cfg.splits is not None else [*evaluation.HEADLINE_SPLITS, "grid"]
    options = {"cache_dir": str(ctx.out / "feature-cache"), "n_jobs": driver_cpus(), **cfg.options}
    if ctx.config.features.include_recorded and "train_rows" not in options:
        # Without the recordings as recorded among the stored rows, the evaluator's own rows
        # (and its augmentation for the grid) stand in.
        options["train_rows"] = ctx.state["rows"] if "rows" in ctx.state else training_rows(ctx)[0]
    # The opened store, not its URL: the evaluator would open a URL without storage_options.
    store = ZooStore.open(ctx.store_url, storage_options=ctx.storage_options)
    metrics = evaluation.evaluate(store, out_dir, splits=splits, params=dict(ctx.config.fit.params),
                                  progress=ctx.progress, **options)
    timing = metrics.pop("timing", {})  # about this run, not the model: kept out of the card
    ctx.state["metrics"] = metrics
    headline = {k: v for k, v in metrics.items() if k.startswith(("rule_bacc", "open_set", "control", "unknown_auroc"))
                and not isinstance(v, (dict, list))}
    parallel = timing.get("n_jobs", 1) > 1 and timing.get("fits", 0) > 1
    return {"out": str(out_dir), "splits": splits, **headline, "timing": timing,
            # fits in worker processes: their CPU, which the driver's own clock does not see
            "worker_cpu_s": timing.get("fit_cpu_s", 0.0) if parallel else 0.0}


def driver_cpus() -> int:
    """Cores this process may run on (the driver-side stages run here, not on the cluster)."""
    import os

    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _cells(grid: list[dict]) -> list:
    """The evaluation grid as the card's expected-accuracy table (cells with a unit count)."""
    from rulefinder.classify.card import AccuracyCell

    cells = []
    for c in grid or []:
        if c.get("units") == "all" or c.get("rule_accuracy") is None:
            continue
        cells.append(AccuracyCell(units=int(c["units"]), sessions=int(c["sessions"]), noise=str(c["noise"]),
                                  accuracy=float(np.clip(c["rule_accuracy"], 0.0, 1.0)), n=c.get("n")))
    return cells


def _card(ctx: StageContext):
    from rulefinder.classify.card import ModelCard, ZooInfo, catalogue_entries, git_commit, spec_hash
    from training_zoo.rules import catalogue

    est = ctx.state["estimator"]
    known = {str(r) for r in est.classes_["rule"]}
    spec = ctx.config.zoo_spec()
    metrics = dict(ctx.state.get("metrics") or {})
    metrics.setdefault("oof_rule_accuracy", float(est.oof_rule_accuracy_))
    cells = _cells(metrics.pop("grid", None))
    return ModelCard(
        name=ctx.name,
        commit=git_commit(),
        estimator=f"{type(est).__module__}.{type(est).__qualname__}",
        description=f"trained by `rulefinder pipeline run {ctx.config.name}`",
        catalogue=catalogue_entries([e for e in catalogue() if e["id"] in known]),
        labels={t: [str(c) for c in est.classes_[t]] for t in TARGETS},
        zoo=ZooInfo(spec=spec, spec_hash=spec_hash(spec), store=ctx.store_url,
                    n_networks=ctx.state.get("n_networks", 0), n_shards=ctx.state.get("n_shards", 0),
                    rules=ctx.state.get("rules", {})),
        n_networks=ctx.state.get("n_networks", 0),
        n_samples=ctx.state.get("n_samples", 0),
        metrics={**metrics, "pipeline_config": ctx.config.model_dump(mode="json")},
        expected_accuracy=cells,
        thresholds={"identified": float(est.identified_threshold_), "unknown": float(est.unknown_threshold_)},
    )


def register(ctx: StageContext) -> dict:
    from rulefinder.classify.registry import ModelRegistry, write_model

    check_name(ctx.name, ctx.replace)
    card = _card(ctx)
    # A copy next to the run's other outputs, then the registry under the data directory.
    local = ctx.out / "model"
    if local.exists():
        import shutil

        shutil.rmtree(local)
    write_model(local, ctx.state["estimator"], card)
    ref = ModelRegistry().register(ctx.state["estimator"], card, name=ctx.name, replace=ctx.replace)
    return {"name": ref.name, "sha256": ref.sha256, "copy": str(local)}


def check_name(name: str, replace: bool) -> None:
    """Fail before any work when the model could not be registered under ``name``."""
    from rulefinder.classify.registry import DEFAULT_MODEL, ModelRegistry

    if name == DEFAULT_MODEL:
        raise ValueError(f"model name {DEFAULT_MODEL!r} is the packaged model's: a run never overwrites it; "
                         "pass another --name")
    registry = ModelRegistry()
    if not replace and name in registry.names():
        raise ValueError(f"a model named {name!r} is already registered under {registry.data_dir}; "
                         "pass --replace to overwrite it or --name for another name")
