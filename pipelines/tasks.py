"""The work of one Ray task: train one zoo shard, or compute one shard's features.

Plain functions (so they run and test without Ray too); :mod:`pipelines.run` wraps them with
``ray.remote``. A task takes a shard's JSON-able spec and the store's URL and returns a small
dict: the data go through the Zarr store, never through Ray's object store, so a task that is
retried simply rewrites its own shard group (one writer per group, see
:mod:`rulefinder.store.zoo_store`).
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
import zlib

log = logging.getLogger(__name__)

# The store a features task opened, kept for the next task this worker process runs in the
# same stage (Ray reuses workers): opening a store and building its network table parses every
# shard's listing, seconds for a 1,296-network zoo, which once per task cost more than the
# features of a task's shards. Keyed by (url, the stage's session token): nothing but feature
# groups is written during a features stage, and a new stage or run passes a new token.
_OPEN_STORE: dict[tuple[str, str], object] = {}


def pin_threads(n: int) -> None:
    """At most ``n`` torch / OpenMP / BLAS threads in this worker process.

    Ray runs one task per requested CPU; a task whose libraries each start a thread per core
    would oversubscribe the node (on 2 cores, two tasks x 2 threads spin against each other).
    """
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(n)
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=n)
    # Only a torch that is already loaded: the features stage needs none (importing it costs
    # seconds per worker), and a torch imported later reads OMP_NUM_THREADS set above.
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(n)


def _where() -> dict:
    info = {"host": socket.gethostname(), "pid": os.getpid(), "node_id": None}
    try:
        import ray

        if ray.is_initialized():
            info["node_id"] = ray.get_runtime_context().get_node_id()
    except Exception:  # outside Ray (a plain call in a test): where is just the process
        pass
    return info


def train_shard(
    shard: dict,
    store_url: str,
    *,
    storage_options: dict | None = None,
    device: str = "cpu",
    threads: int = 1,
) -> dict:
    """Train ``shard`` (a :class:`training_zoo.spec.Shard` as a dict) and write it to the store."""
    t0, c0 = time.perf_counter(), time.process_time()
    import torch  # noqa: F401  (loaded before pin_threads, which sets its thread count)

    pin_threads(threads)
    from rulefinder.store import ZooStore
    from training_zoo.shard import run_shard

    records = run_shard(shard, device=device)
    store = ZooStore.open(store_url, mode="r+", storage_options=storage_options)
    store.write_shard(records, shard["shard_id"], overwrite=True, progress=False)
    return {
        "shard_id": shard["shard_id"],
        "networks": len(records),
        "diverged": int(sum(bool(r.diverged) for r in records)),
        "seconds": time.perf_counter() - t0,
        "cpu_s": time.process_time() - c0,
        "device": device,
        **_where(),
    }


def shard_features(
    shard_id: str,
    store_url: str,
    settings: dict,
    fingerprint: str,
    *,
    estimator_params: dict | None = None,
    storage_options: dict | None = None,
    threads: int = 1,
    _store=None,
) -> dict:
    """Feature rows of every network of one stored shard, written to ``features/<shard_id>``.

    The recordings and their labels come from :func:`rulefinder.classify.dataset.zoo_dataset`
    (the network as recorded plus ``settings['virtual']`` experiments, ``n_draws`` each), the
    rows from the estimator's own ``transform`` (``RuleIdentifier(**estimator_params)``), so the
    fit stage reads exactly what the estimator would have computed. Each row carries its
    recording's labels (rule, family, optimizer, variant, task, shard, learned, ...).
    """
    t0, c0 = time.perf_counter(), time.process_time()
    pin_threads(threads)
    import numpy as np

    from rulefinder.classify.dataset import zoo_dataset
    from rulefinder.classify.estimator import RuleIdentifier
    from rulefinder.store import ZooStore
    from rulefinder.store.features import write_features

    store = _store if _store is not None else ZooStore.open(store_url, storage_options=storage_options)
    ids = store.select(shard=shard_id, include_diverged=bool(settings.get("include_diverged", False)))
    if ids:
        # zoo_dataset seeds draws by the network's position in ``ids``; offset each experiment's
        # seed by the shard, so that the first networks of two shards do not share draws.
        salt = zlib.crc32(shard_id.encode()) * 1000
        experiments = [{**e, "seed": int(e.get("seed", 0)) * 2**32 + salt} for e in settings.get("virtual", [])]
        recs, labels = zoo_dataset(
            store, networks=ids, experiments=experiments,
            n_draws=int(settings.get("n_draws", 1)), include_plain=bool(settings.get("include_recorded", True)),
            include_diverged=bool(settings.get("include_diverged", False)),
        )
    else:  # every network of the shard diverged: an empty, complete group
        recs, labels = [], None
    estimator = RuleIdentifier(**(estimator_params or {}))
    rows = estimator.transform(recs)
    if labels is not None and rows.sizes["sample"]:
        rec = np.asarray(rows.coords["recording"].values, dtype=int)
        extra = {}
        for name, var in labels.data_vars.items():
            values = np.asarray(var.values)[rec]
            extra[name] = ("sample", values.astype(str) if values.dtype.kind in "OUT" else values)
        rows = rows.assign_coords(extra)
    else:
        rows = rows.assign_coords(network=("sample", np.zeros(0, str)), virtual=("sample", np.zeros(0, str)))
    write_features(store_url, shard_id, rows, fingerprint=fingerprint, storage_options=storage_options)
    return {
        "shard_id": shard_id,
        "networks": len(ids),
        "samples": int(rows.sizes["sample"]),
        "recordings": len(recs),
        "seconds": time.perf_counter() - t0,
        "cpu_s": time.process_time() - c0,
        **_where(),
    }


def features_batch(
    shard_ids: list[str], store_url: str, settings: dict, fingerprint: str, *, session: str | None = None, **kwargs
) -> list[dict]:
    """:func:`shard_features` for several shards with one opened store.

    With a ``session`` token (the driver passes one per features stage) the opened store is
    also kept for this worker's next task of the same session.
    """
    store = _open_store(store_url, kwargs.get("storage_options"), session)
    return [shard_features(k, store_url, settings, fingerprint, _store=store, **kwargs) for k in shard_ids]


def _open_store(store_url: str, storage_options: dict | None, session: str | None):
    from rulefinder.store import ZooStore

    key = (store_url, session or "")
    if session is not None and key in _OPEN_STORE:
        return _OPEN_STORE[key]
    store = ZooStore.open(store_url, storage_options=storage_options)
    _OPEN_STORE.clear()
    if session is not None:
        _OPEN_STORE[key] = store
    return store
