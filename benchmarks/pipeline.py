"""Time the batch pipeline: one JSON object per config on stdout.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/pipeline.py [--configs smoke default]
        [--address ADDR] [--num-cpus N] [--until STAGE] [--keep DIR] [--store URL --resume]

Each config runs end to end (a fresh store, a throw-away model registry) on a local Ray (or
``--address``). ``--store URL --resume`` runs on an existing store instead (its complete
shards are not trained again: with ``--until features`` this times the features stage of a
zoo trained earlier; the store gains a ``features/`` group). Printed keys: ``config``,
``wall_s`` (whole run, Ray start included), ``cpu_s`` (CPU seconds of the driver and every
process it started, Ray's daemons and workers included; sampled every 0.5 s, so a process
that ends between samples loses at most its last half second), ``networks``,
``networks_per_s`` (networks over the train stage's seconds), ``features_recordings_per_s``
(recordings featurised over the features stage's seconds), ``stages`` (seconds and status
per stage), ``ray_start_s``, ``cluster``, ``estimate_wall_s`` (the dry-run estimate for the
same cluster, to check the cost model), ``load_average`` (the machine is shared).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


class TreeCPU:
    """CPU seconds of this process and all its descendants while it runs (a sampling thread:
    Ray's workers are children of its raylet, which never reaps them into our rusage)."""

    def __init__(self, every_s: float = 0.5) -> None:
        import psutil

        self._me = psutil.Process()
        self._seen: dict[tuple[int, float], float] = {}
        self._stop = threading.Event()
        self._every = every_s
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _sample(self) -> None:
        import psutil

        for proc in [self._me, *self._me.children(recursive=True)]:
            try:
                t = proc.cpu_times()
                self._seen[(proc.pid, proc.create_time())] = t.user + t.system + t.children_user + t.children_system
            except psutil.Error:  # ended between listing and reading
                pass

    def _loop(self) -> None:
        while not self._stop.wait(self._every):
            self._sample()

    def __enter__(self) -> TreeCPU:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    @property
    def seconds(self) -> float:
        return sum(self._seen.values())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=["smoke"])
    parser.add_argument("--address", default=None)
    parser.add_argument("--num-cpus", type=int, default=None)
    parser.add_argument("--until", default="register")
    parser.add_argument("--keep", default=None, help="keep the runs under this directory")
    parser.add_argument("--store", default=None, help="an existing store to run on (with --resume)")
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args(argv)
    if args.store and len(args.configs) != 1:
        parser.error("--store takes one config")

    base = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="rulefinder-bench-"))
    os.environ["RULEFINDER_DATA_DIR"] = str(base / "data")  # never the user's registry
    from pipelines.config import load_config
    from pipelines.estimate import estimate
    from pipelines.run import Pipeline

    for name in args.configs:
        cfg = load_config(name)
        load_before = os.getloadavg()[0]
        pipe = Pipeline(cfg, address=args.address, out=base / name, store=args.store, resume=args.resume,
                        num_cpus=args.num_cpus, until=args.until, replace=True, progress=False)
        with TreeCPU() as cpu:
            summary = pipe.run()
        stages = summary["stages"]
        train_s, feat_s = stages["train"]["seconds"], stages["features"]["seconds"]
        recordings = stages["features"].get("recordings", 0)
        est = estimate(cfg, summary["cluster"])
        print(json.dumps({
            "config": name,
            "wall_s": summary["wall_s"],
            "cpu_s": round(cpu.seconds, 1),
            "networks": summary["networks"],
            "networks_per_s": round(summary["networks"] / train_s, 3) if train_s else None,
            "features_recordings_per_s": round(recordings / feat_s, 2) if recordings and feat_s else None,
            "stages": {k: {"seconds": v["seconds"], "status": v["status"]} for k, v in stages.items()},
            "ray_start_s": summary["ray_start_s"],
            "cluster": summary["cluster"],
            "failed": summary["failed"],
            "estimate_wall_s": round(est.wall_s, 1),
            "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        }), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
