"""CPU per phase of the pipeline's features task on a stored zoo (one process, no Ray).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/features_stage.py STORE [--shards 40]
        [--per-task 8] [--config default]

Runs ``pipelines.tasks.features_batch`` (what a features-stage worker runs) on the first
``--shards`` complete shards of ``STORE``, ``--per-task`` shards per call, and prints one JSON
object: recordings, CPU and wall seconds, CPU ms per recording, and the CPU seconds of each
phase (opening the store, selecting a shard's networks, the label table, reading recordings,
virtual experiments, the estimator's features, writing the feature groups). The store gains
``features/`` groups (fingerprint ``benchmark``): run it on a copy.
"""

from __future__ import annotations

import argparse
import collections
import functools
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("store")
    parser.add_argument("--shards", type=int, default=40)
    parser.add_argument("--per-task", type=int, default=8)
    parser.add_argument("--config", default="default")
    args = parser.parse_args(argv)

    import pipelines.tasks as tasks
    import rulefinder.classify.dataset as dataset
    import rulefinder.classify.estimator as estimator
    import rulefinder.store.features as store_features
    import rulefinder.virtual.pipeline as virtual
    from pipelines.config import load_config
    from rulefinder.store import ZooStore

    cpu: collections.Counter = collections.Counter()

    def timed(owner, name: str, label: str) -> None:
        fn = getattr(owner, name)

        @functools.wraps(fn)
        def wrapper(*a, **k):
            t0 = time.process_time()
            try:
                return fn(*a, **k)
            finally:
                cpu[label] += time.process_time() - t0

        # A classmethod read from its class is already bound, so the plain wrapper serves both.
        setattr(owner, name, wrapper)

    timed(ZooStore, "open", "open the store")
    timed(ZooStore, "select", "select the shard's networks")
    timed(dataset, "network_table", "label table")
    timed(ZooStore, "recording", "read recordings")
    timed(virtual.VirtualExperiment, "apply", "virtual experiments")
    timed(estimator.RuleIdentifier, "transform", "features (estimator transform)")
    timed(store_features, "write_features", "write feature groups")

    cfg = load_config(args.config)
    settings = cfg.features.model_dump(mode="json", exclude={"budget_s", "shards_per_task"})
    ids = sorted(ZooStore.open(args.store).complete_shards())[: args.shards]
    cpu.clear()
    c0, t0 = time.process_time(), time.perf_counter()
    results = []
    for i in range(0, len(ids), args.per_task):
        results += tasks.features_batch(ids[i:i + args.per_task], args.store, settings, "benchmark",
                                        estimator_params=cfg.fit.params, threads=1, session="benchmark")
    total, wall = time.process_time() - c0, time.perf_counter() - t0
    recordings = sum(r["recordings"] for r in results)
    phases = {k: round(v, 2) for k, v in cpu.most_common()}
    phases["other"] = round(total - sum(cpu.values()), 2)
    print(json.dumps({
        "shards": len(ids), "recordings": recordings, "cpu_s": round(total, 2), "wall_s": round(wall, 2),
        "ms_cpu_per_recording": round(1000 * total / recordings, 1) if recordings else None,
        "phases_cpu_s": phases, "load_average": round(os.getloadavg()[0], 2),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
