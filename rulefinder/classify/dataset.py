"""Store -> (virtual experiments) -> recordings + labels: the one dataset step of classify.

:func:`zoo_dataset` lists the complete networks of a :class:`~rulefinder.store.ZooStore`
(optionally only some of them), reads each as a recording, optionally passes it through
virtual experiments, and returns the recordings with a labels table: an ``xr.Dataset`` over dim
``sample`` with ``network``, ``shard``, ``rule``, ``family``, ``optimizer``, ``variant``,
``task``, ``arch_family``, ``architecture``, ``learned``, ``final_accuracy``, ``virtual`` (the
experiment spec as JSON, ``""`` for the plain recording) and the per-shard hyperparameters
used by leave-one-range-out splits (``epochs``, ``batch_size``, ``input_scale``, ``lr``).

Stores written before the zoo-fidelity work lack ``variant`` and ``learned``: ``variant`` is
then ``"default"`` and ``learned`` is computed with the zoo's definition (final test accuracy
>= baseline + half of (backprop's median - baseline) over networks of the same task,
architecture family and optimizer), where the frozen-random-hidden-layer baseline, which such
stores do not hold, is replaced by chance level (1 / classes); that makes the bar lower than
the zoo's, so more networks count as learned.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence

import numpy as np
import xarray as xr
from tqdm.auto import tqdm

from rulefinder.virtual import VirtualExperiment

log = logging.getLogger(__name__)

#: Label columns every labels table has, one value per sample.
LABEL_COLUMNS: tuple[str, ...] = (
    "network",
    "shard",
    "rule",
    "family",
    "optimizer",
    "variant",
    "task",
    "arch_family",
    "architecture",
)
#: Per-shard hyperparameters that leave-one-range-out splits hold out.
RANGE_HYPERPARAMETERS: tuple[str, ...] = ("epochs", "batch_size", "input_scale", "lr")
#: Classes of the zoo's tasks (chance level for the fallback ``learned`` bar).
_TASK_CLASSES = 10


def _hyper(text: str) -> dict:
    try:
        value = json.loads(text) if text else {}
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def learned_fallback(table: xr.Dataset) -> np.ndarray:
    """``learned`` for stores that lack it (see the module docstring)."""
    acc = np.asarray(table["final_accuracy"].values, dtype=np.float64)
    out = np.zeros(acc.shape, dtype=bool)
    keys = list(
        zip(
            table["task"].values.tolist(),
            table["arch_family"].values.tolist(),
            table["optimizer"].values.tolist(),
            strict=True,
        )
    )
    rules = table["rule"].values
    baseline = 1.0 / _TASK_CLASSES
    for key in set(keys):
        cell = np.array([k == key for k in keys])
        bp = acc[cell & (rules == "backprop") & np.isfinite(acc)]
        # No backprop in the cell: fall back to backprop's median over the task.
        if bp.size == 0:
            same_task = table["task"].values == key[0]
            bp = acc[same_task & (rules == "backprop") & np.isfinite(acc)]
        bar = baseline + 0.5 * ((np.median(bp) if bp.size else 1.0) - baseline)
        out[cell] = np.nan_to_num(acc[cell], nan=-1.0) >= bar
    return out


def learned_labels(table: xr.Dataset) -> np.ndarray:
    """Each network's ``learned``: the store's flag where it is known, else the fallback.

    A store written before the flag reads as all False; a network whose task has no shipped
    learning bar has ``learned_threshold`` NaN ("not known", not "did not learn"): both get
    :func:`learned_fallback`.
    """
    fallback = learned_fallback(table)
    if "learned" not in table:
        return fallback
    learned = np.asarray(table["learned"].values, bool)
    if "learned_threshold" in table:
        unknown = ~np.isfinite(np.asarray(table["learned_threshold"].values, dtype=np.float64))
    else:
        unknown = np.full(learned.shape, not learned.any())
    return np.where(unknown, fallback, learned)


def network_table(store, networks: Sequence[str] | None = None, include_diverged: bool = False) -> xr.Dataset:
    """The labels of a store's complete networks (all, or ``networks``) over dim ``sample``."""
    table = store.networks()
    keep = table["complete"].values.copy()
    if not include_diverged:
        keep &= ~table["diverged"].values.astype(bool)
    if networks is not None:
        keep &= np.isin(table["network"].values, np.asarray(list(networks), dtype=str))
    learned = learned_labels(table)
    variant = (
        np.asarray(table["variant"].values).astype(object)
        if "variant" in table
        else np.full(table.sizes["network"], "default", dtype=object)
    )
    # Missing or truncated defaults ("", "d") of stores written before variants existed.
    variant = np.array(["default" if "default".startswith(str(v)) else str(v) for v in variant], dtype=object)
    cols: dict[str, np.ndarray] = {"network": table["network"].values.astype(str)}
    for name in LABEL_COLUMNS[1:]:
        if name == "variant":
            cols[name] = variant.astype(str)
        else:
            cols[name] = np.asarray(table[name].values).astype(str)
    cols["learned"] = learned
    cols["final_accuracy"] = np.asarray(table["final_accuracy"].values, dtype=np.float64)
    hyper = [_hyper(str(h)) for h in table["hyperparameters"].values.tolist()]
    for name in RANGE_HYPERPARAMETERS:
        cols[name] = np.array([float(h.get(name, np.nan)) if _is_num(h.get(name)) else np.nan for h in hyper])
    data = {k: ("sample", v[keep]) for k, v in cols.items()}
    return xr.Dataset(data, coords={"sample": np.arange(int(keep.sum()))}, attrs={"store": str(store.url)})


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def zoo_dataset(
    store,
    networks: Sequence[str] | None = None,
    experiments: Sequence[VirtualExperiment | dict] = (),
    n_draws: int = 1,
    include_plain: bool = True,
    include_diverged: bool = False,
    progress: bool = False,
) -> tuple[list[xr.DataArray], xr.Dataset]:
    """Recordings and their labels table from a zoo store.

    Parameters:
        store: a :class:`~rulefinder.store.ZooStore` (or its URL).
        networks: network ids to use (default: every complete, non-diverged network).
        experiments: virtual experiments (objects or spec dicts) applied to each network;
            each gives ``n_draws`` samples per network (seeds ``seed .. seed + n_draws - 1``,
            offset per network so draws differ across networks).
        include_plain: also keep each network's full recording (``virtual == ""``).
        include_diverged: keep networks whose training diverged.

    Returns ``(recordings, labels)`` with ``labels`` an ``xr.Dataset`` over ``sample`` aligned
    with ``recordings``.
    """
    if isinstance(store, str):
        from rulefinder.store import ZooStore

        store = ZooStore.open(store)
    table = network_table(store, networks, include_diverged)
    exps = [e if isinstance(e, VirtualExperiment) else VirtualExperiment.from_spec(e) for e in experiments]
    recs: list[xr.DataArray] = []
    rows: list[int] = []
    virtual: list[str] = []
    ids = table["network"].values.tolist()
    for i, nid in enumerate(tqdm(ids, desc="recordings", unit="network", disable=not progress)):
        rec = store.recording(nid)
        if include_plain:
            recs.append(rec)
            rows.append(i)
            virtual.append("")
        for exp in exps:
            for d in range(n_draws):
                one = VirtualExperiment(exp.steps, exp.seed + i * n_draws + d).apply(rec)
                recs.append(one)
                rows.append(i)
                virtual.append(one.attrs.get("virtual", ""))
    labels = table.isel(sample=np.asarray(rows, dtype=int))
    labels = labels.assign(virtual=("sample", np.asarray(virtual, dtype=str)))
    labels = labels.assign_coords(sample=np.arange(len(rows)))
    return recs, labels


def label_dict(labels: xr.Dataset, targets: Sequence[str] = ("rule", "family", "optimizer")) -> dict[str, np.ndarray]:
    """The ``labels`` mapping :meth:`RuleIdentifier.fit` takes, from a labels table."""
    return {t: labels[t].values.astype(str) for t in targets}
