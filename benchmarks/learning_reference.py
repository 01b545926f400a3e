"""The learning bars behind the store's ``learned`` flag: writes training_zoo/learning_reference.json.

For every cell of a zoo spec (task x architecture entry x optimizer, drawn exactly as
``training_zoo.spec.expand_spec`` draws them) this trains two populations under the same draws
(shape, learning rates, inits, seeds, batch size, input scale, training length):

- backprop (the rule the others are measured against), and
- the readout-only baseline (frozen random hidden layers, readout trained by its gradient).

Per task, architecture family and optimizer it stores the median final test accuracy of each
(diverged networks left out, as the store leaves them out of training sets). A zoo network has
*learned* when its final test accuracy is at least ``baseline + 0.5 * (backprop_median -
baseline)`` (``training_zoo.baselines.learned_threshold``). Prints the table as JSON.

Usage: python benchmarks/learning_reference.py [--spec default] [--networks 8]
       [--tasks digits,mnist1d] [--families mlp,cnn] [--workers 1] [--merge]
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import time
from pathlib import Path

import numpy as np
import torch

from training_zoo.baselines import REFERENCE_PATH, ReadoutOnly, bar_from, reference_key
from training_zoo.spec import expand_spec, load_spec


def _accuracies(result: dict) -> list[float]:
    acc = result["test_accuracy"].float().numpy()
    return [float(a) for a, d in zip(acc, result["diverged"].numpy()) if not d]


def _job(args: tuple) -> tuple:
    shard_dict, threads = args
    from training_zoo.shard import train_shard

    torch.set_num_threads(threads)
    logging.getLogger("training_zoo").setLevel(logging.ERROR)
    t0 = time.perf_counter()
    bp = _accuracies(train_shard(shard_dict))
    base = _accuracies(train_shard(shard_dict, rule=ReadoutOnly()))
    return shard_dict, bp, base, time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--spec", default="default")
    p.add_argument("--networks", type=int, default=8, help="networks per population (spec's own if 0)")
    p.add_argument("--tasks", help="comma-separated subset of the spec's tasks")
    p.add_argument("--families", help="comma-separated subset of architecture families")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(REFERENCE_PATH))
    p.add_argument("--merge", action="store_true", help="keep the out file's cells not rerun here")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    spec = dict(load_spec(args.spec))
    spec.update(rules=["backprop"], variants="default", rule_lr_scale={}, rule_epochs_scale={})
    if args.networks:
        spec["networks_per_shard"] = args.networks
    if args.tasks:
        spec["tasks"] = args.tasks.split(",")
    if args.families:
        spec["architectures"] = [a for a in spec["architectures"] if a.get("family", "mlp") in args.families.split(",")]
    shards = expand_spec(spec)
    pooled: dict[str, dict[str, list]] = {}
    t0 = time.perf_counter()
    jobs = [(s.to_dict(), args.threads) for s in shards]
    if args.workers > 1:
        import multiprocessing as mp

        pool = mp.get_context("spawn").Pool(args.workers)
        results = pool.imap_unordered(_job, jobs)
    else:
        results = map(_job, jobs)
    for shard, bp, base, sec in results:
        key = reference_key(shard["task"], shard["arch"]["family"], shard["optimizer"])
        cell = pooled.setdefault(key, {"backprop": [], "baseline": [], "shards": []})
        cell["backprop"] += bp
        cell["baseline"] += base
        cell["shards"].append(shard["shard_id"])
        logging.info("%s %s: backprop median %.3f, baseline median %.3f (%.0f s)", key, shard["arch"],
                     np.median(bp) if bp else float("nan"), np.median(base) if base else float("nan"), sec)
    out = Path(args.out)
    old = json.loads(out.read_text()) if args.merge and out.exists() else {"cells": {}}
    cells = dict(old["cells"])
    for key, c in sorted(pooled.items()):
        if not c["backprop"] or not c["baseline"]:
            logging.warning("%s: every network diverged; no bar", key)
            continue
        b, bp = float(np.median(c["baseline"])), float(np.median(c["backprop"]))
        cells[key] = {"baseline": round(b, 4), "backprop_median": round(bp, 4),
                      "bar": round(bar_from(b, bp), 4), "n_backprop": len(c["backprop"]),
                      "n_baseline": len(c["baseline"])}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parents[1]).stdout.strip()
    data = {
        "description": "Learning bars per task|arch_family|optimizer: medians of final test accuracy "
                       "of backprop and of the readout-only baseline under the spec's draws "
                       "(diverged left out); bar = baseline + 0.5 * max(0, backprop_median - baseline).",
        "spec": spec.get("name", args.spec), "networks_per_population": spec.get("networks_per_shard"),
        "commit": commit, "seconds": round(time.perf_counter() - t0 + old.get("seconds", 0) * args.merge, 1),
        "cells": dict(sorted(cells.items())),
    }
    out.write_text(json.dumps(data, indent=1) + "\n")
    print(json.dumps(data))


if __name__ == "__main__":
    main()
