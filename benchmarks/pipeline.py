"""Time the batch pipeline: one JSON object per config on stdout.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/pipeline.py [--configs smoke default]
        [--address ADDR] [--num-cpus N] [--until STAGE] [--keep DIR]

Each config runs end to end (a fresh store, a throw-away model registry) on a local Ray (or
``--address``). Printed keys: ``config``, ``wall_s`` (whole run, Ray start included),
``networks``, ``networks_per_s`` (networks over the train stage's seconds), ``stages`` (seconds
and status per stage), ``ray_start_s``, ``cluster``, ``estimate_wall_s`` (the dry-run estimate
for the same cluster, to check the cost model), ``load_average`` (the machine is shared).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=["smoke"])
    parser.add_argument("--address", default=None)
    parser.add_argument("--num-cpus", type=int, default=None)
    parser.add_argument("--until", default="register")
    parser.add_argument("--keep", default=None, help="keep the runs under this directory")
    args = parser.parse_args(argv)

    base = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="rulefinder-bench-"))
    os.environ["RULEFINDER_DATA_DIR"] = str(base / "data")  # never the user's registry
    from pipelines.config import load_config
    from pipelines.estimate import estimate
    from pipelines.run import Pipeline

    for name in args.configs:
        cfg = load_config(name)
        load_before = os.getloadavg()[0]
        pipe = Pipeline(cfg, address=args.address, out=base / name, num_cpus=args.num_cpus,
                        until=args.until, replace=True, progress=False)
        summary = pipe.run()
        train_s = summary["stages"]["train"]["seconds"]
        est = estimate(cfg, summary["cluster"])
        print(json.dumps({
            "config": name,
            "wall_s": summary["wall_s"],
            "networks": summary["networks"],
            "networks_per_s": round(summary["networks"] / train_s, 3) if train_s else None,
            "stages": {k: {"seconds": v["seconds"], "status": v["status"]} for k, v in summary["stages"].items()},
            "ray_start_s": summary["ray_start_s"],
            "cluster": summary["cluster"],
            "failed": summary["failed"],
            "estimate_wall_s": round(est.wall_s, 1),
            "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        }), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
