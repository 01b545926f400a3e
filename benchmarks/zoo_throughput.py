"""Zoo throughput: networks trained, recorded and stored per minute on a fixed mix. Prints JSON.

The mix (``mix_shards``): the `default` zoo spec expanded as usual, then one shard per rule x
architecture family (mlp, resmlp, cnn), the rule's variants taken in turn, with the shard's own
task, batch size and training length (epochs) from the spec, each multiplied by
``--length-scale`` so that the whole mix fits in minutes. Every shard trains ``--networks``
networks. What is timed is what a zoo run does: build, train, checkpoint evaluation,
recording, writing to a Zarr store.

Where the time goes (seconds summed over the mix, and per rule family):
- ``train_steps``: the rules' ``step`` calls, inherited ones included (for EqProp and
  predictive coding this is mostly their relaxations), plus the optimizer's update;
- ``evaluation``: test accuracy and loss at every checkpoint (rules with their own forward
  relax here too);
- ``recording``: the recorder's probe passes and statistics;
- ``store``: ``ZooStore.write_shard``;
- ``other``: network construction, input batches, bookkeeping.

Wall-clock seconds give ``networks_per_min``; the process's CPU seconds (every thread) give
``networks_per_cpu_min``, the steadier figure on a shared machine. The same parts are reported
in CPU seconds (``where_the_cpu_goes_s``, ``per_family_where_cpu_s``); each shard's row goes to
stderr as it finishes.

Tasks are loaded once before the clock starts (a process loads each task once; the time is
reported apart as ``task_loading_once_s``).

With ``--baseline-rev REV`` the same shard list also runs on the implementation at commit REV
(a git worktree, in a subprocess, same threads, one after the other in this run), over the
shards that implementation supports (a shard whose rule or variant it lacks is left out of
both sides of the ratio, and counted): ``speedup_vs_baseline`` = networks per minute now /
then on those shards. An implementation from before rule variants existed (8379dfa) runs only
``default``-variant shards: ``--default-variants`` gives every shard its rule's default variant
(same rule x architecture family cells) so that the comparison covers every cell the old
implementation supports. The baseline worker drops this checkout's editable-install finder, so
a module the old tree lacks fails instead of being taken from this checkout.

Usage: python benchmarks/zoo_throughput.py [--threads 2] [--networks 32] [--length-scale 0.05]
       [--baseline-rev 8379dfa] [--default-variants] [--rules backprop,hebbian]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def mix_shards(networks: int, length_scale: float, rules: list[str] | None = None,
               default_variants: bool = False) -> list[dict]:
    """The fixed mix as shard dicts (JSON), built from the `default` spec with this code.

    ``default_variants``: every shard takes its rule's default variant (an implementation from
    before variants existed can run all of them), instead of the variants in turn."""
    import numpy as np

    from training_zoo.rules import all_rules
    from training_zoo.spec import expand_spec, load_spec

    spec = load_spec("default")
    spec = {**spec, "networks_per_shard": networks, "shards_per_cell": 1}
    if rules:
        spec["rules"] = rules
    shards = expand_spec(spec)
    rng = np.random.default_rng(0)
    by_cell: dict[tuple, list] = defaultdict(list)
    for s in shards:
        by_cell[(s.rule, s.arch["family"])].append(s)
    out = []
    for (rule, family), cell in sorted(by_cell.items()):
        variants = list(all_rules()[rule].variants)
        fam_index = ("mlp", "resmlp", "cnn").index(family)
        want = "default" if default_variants else variants[fam_index % len(variants)]
        pool = [s for s in cell if getattr(s, "variant", "default") == want] or cell
        s = pool[int(rng.integers(len(pool)))]
        d = s.to_dict()
        d["epochs"] = float(d["epochs"]) * length_scale
        out.append(d)
    return out


def _timed(obj, name: str, bucket: dict, key: str, depth: dict):
    """Add ``obj.name``'s wall time to ``bucket[key]``; a call made inside another call timed
    under the same key (a subclass's ``step`` calling its base's, Kolen-Pollack's B optimizer
    inside the rule's step) is not counted twice."""
    original = getattr(obj, name)

    def wrapper(*args, **kwargs):
        if depth[key]:
            return original(*args, **kwargs)
        depth[key] += 1
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            return original(*args, **kwargs)
        finally:
            bucket[key] += time.perf_counter() - t0
            bucket[key + "_cpu"] += time.process_time() - c0
            depth[key] -= 1

    setattr(obj, name, wrapper)


def run_worker(shards: list[dict], threads: int) -> list[dict]:
    """Train, record and store each shard with the code on ``sys.path``; time its parts."""
    import torch

    torch.set_num_threads(threads)
    import training_zoo.trainer as trainer
    from rulefinder.store import ZooStore
    from training_zoo.recorder import Recorder
    from training_zoo.rules import all_rules

    try:
        from training_zoo.shard import run_shard
        from training_zoo.spec import Shard
    except ImportError:  # the implementation before run_shard moved out of spec.py
        from training_zoo.spec import Shard, run_shard
    known_fields = set(Shard.__dataclass_fields__)
    import training_zoo.optimizers as optimizers

    bucket: dict[str, float] = defaultdict(float)
    depth: dict[str, int] = defaultdict(int)
    steppers = {c for cls in all_rules().values() for c in cls.__mro__ if "step" in vars(c)}
    steppers |= {c for c in vars(optimizers).values()
                 if isinstance(c, type) and issubclass(c, optimizers.PopulationOptimizer) and "step" in vars(c)}
    for cls in steppers:
        _timed(cls, "step", bucket, "train_steps", depth)
    _timed(trainer, "evaluate", bucket, "evaluation", depth)
    _timed(Recorder, "record", bucket, "recording", depth)
    from training_zoo.tasks import load_task

    # Tasks load once per process (cached): a one-off cost, reported apart, not per shard.
    t0 = time.perf_counter()
    for d in shards:
        load_task(d["task"], n_probe=d["probes"], input_scale=d["input_scale"])
    task_loading = time.perf_counter() - t0
    rules = all_rules()
    results = [{"task_loading_s": task_loading}]
    with tempfile.TemporaryDirectory() as tmp:
        store = ZooStore.create(str(Path(tmp) / "bench.zarr"))
        for d in shards:
            rule = rules.get(d["rule"])
            variant = d.get("variant", "default")
            if rule is None or d["arch"]["family"] not in rule.supports or (
                variant != "default" and variant not in getattr(rule, "variants", {})
            ):
                results.append({"shard": d["shard_id"], "supported": False})
                continue
            bucket.clear()
            c0 = time.process_time()
            t0 = time.perf_counter()
            records = run_shard({k: v for k, v in d.items() if k in known_fields})
            t1, c1 = time.perf_counter(), time.process_time()
            # older stores reject "@" (synthetic@0.5) in shard ids; the id is not what is timed
            store.write_shard(records, d["shard_id"].replace("@", "_"), overwrite=True)
            t2 = time.perf_counter()
            cpu = time.process_time() - c0
            timed_cpu = bucket["train_steps_cpu"] + bucket["evaluation_cpu"] + bucket["recording_cpu"]
            results.append({
                "shard": d["shard_id"], "supported": True, "rule": d["rule"],
                "family": rule.family, "arch_family": d["arch"]["family"], "networks": len(records), "seconds": t2 - t0, "cpu_seconds": cpu,
                "train_steps": bucket["train_steps"], "evaluation": bucket["evaluation"],
                "recording": bucket["recording"], "store": t2 - t1,
                "other": max((t1 - t0) - bucket["train_steps"] - bucket["evaluation"] - bucket["recording"], 0.0),
                "cpu": {"train_steps": bucket["train_steps_cpu"], "evaluation": bucket["evaluation_cpu"],
                        "recording": bucket["recording_cpu"], "store": cpu - (c1 - c0),
                        "other": max((c1 - c0) - timed_cpu, 0.0)},
            })
            print(json.dumps(results[-1]), file=sys.stderr, flush=True)  # progress: one line per shard
    return results


def summarise(rows: list[dict]) -> dict:
    loading = sum(r.get("task_loading_s", 0.0) for r in rows)
    rows = [r for r in rows if r.get("supported")]
    seconds = sum(r["seconds"] for r in rows)
    cpu = sum(r.get("cpu_seconds", 0.0) for r in rows)
    networks = sum(r["networks"] for r in rows)
    parts = ("train_steps", "evaluation", "recording", "store", "other")
    per_family: dict[str, dict] = defaultdict(lambda: defaultdict(float))
    per_arch: dict[str, float] = defaultdict(float)
    for r in rows:
        for key in ("seconds", "cpu_seconds"):
            per_family[r["family"]][key] += r.get(key, 0.0)
        for key in parts:
            per_family[r["family"]][key] += r.get("cpu", {}).get(key, 0.0)
        per_arch[r.get("arch_family", "?")] += r.get("cpu_seconds", 0.0)
    return {
        "shards": len(rows),
        "networks": networks,
        "seconds": round(seconds, 3),
        "networks_per_min": round(60.0 * networks / seconds, 2) if seconds else None,
        "cpu_seconds": round(cpu, 3),
        "networks_per_cpu_min": round(60.0 * networks / cpu, 2) if cpu else None,
        "where_the_time_goes_s": {p: round(sum(r[p] for r in rows), 3) for p in parts},
        "where_the_cpu_goes_s": {p: round(sum(r.get("cpu", {}).get(p, 0.0) for r in rows), 3) for p in parts},
        "per_family_s": {f: round(v["seconds"], 3) for f, v in sorted(per_family.items())},
        "per_family_cpu_s": {f: round(v["cpu_seconds"], 3) for f, v in sorted(per_family.items())},
        "per_family_where_cpu_s": {f: {p: round(v[p], 3) for p in parts} for f, v in sorted(per_family.items())},
        "per_arch_family_cpu_s": {a: round(v, 3) for a, v in sorted(per_arch.items())},
        "task_loading_once_s": round(loading, 3),
    }


def _baseline(rev: str, shards: list[dict], threads: int) -> list[dict]:
    tree = Path(tempfile.mkdtemp(prefix="rulefinder-base-"))
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-f", str(tree), rev],
                   check=True, capture_output=True)
    try:
        env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": str(threads)}
        out = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "--worker", "--isolated", "--threads", str(threads)],
            input=json.dumps(shards), capture_output=True, text=True, env=env, cwd=tree,
        )
        if out.returncode:
            raise RuntimeError(f"baseline run at {rev} failed:\n{out.stderr[-3000:]}")
        return json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], capture_output=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--networks", type=int, default=32, help="networks per shard (the default spec's M)")
    parser.add_argument("--length-scale", type=float, default=0.05, help="fraction of each shard's epochs")
    parser.add_argument("--rules", default=None, help="comma-separated rule ids (default: every rule)")
    parser.add_argument("--baseline-rev", default=None, help="also run the implementation at this commit")
    parser.add_argument("--default-variants", action="store_true",
                        help="every shard takes its rule's default variant (for a baseline from before variants)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--isolated", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    import logging

    logging.disable(logging.WARNING)
    if args.worker:
        if args.isolated:
            # The baseline tree is on PYTHONPATH, but an editable install of this checkout
            # resolves any module that tree lacks (e.g. training_zoo/shard.py) from here:
            # drop that finder so the baseline runs its own code or fails.
            sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in getattr(f, "__module__", "")]
        print(json.dumps(run_worker(json.loads(sys.stdin.read()), args.threads)))
        return
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    shards = mix_shards(args.networks, args.length_scale, args.rules.split(",") if args.rules else None,
                        default_variants=args.default_variants)
    now = run_worker(shards, args.threads)
    report = {
        "benchmark": "zoo_throughput",
        "threads": args.threads,
        "device": "cpu",
        "machine": platform.processor() or platform.machine(),
        "networks_per_shard": args.networks,
        "length_scale": args.length_scale,
        **summarise(now),
    }
    if args.baseline_rev:
        then = _baseline(args.baseline_rev, shards, args.threads)
        both = {r["shard"] for r in then if r.get("supported")}
        now_common = [r for r in now if r.get("shard") in both or "task_loading_s" in r]
        now_common = summarise(now_common)
        then_common = summarise(then)
        report["baseline"] = {
            "rev": args.baseline_rev,
            "shards_unsupported_then": sum(1 for r in then if not r.get("supported")),
            "networks_per_min_now": now_common["networks_per_min"],
            "networks_per_min_then": then_common["networks_per_min"],
            "speedup_vs_baseline": round(now_common["networks_per_min"] / then_common["networks_per_min"], 3)
            if then_common["networks_per_min"] else None,
            "networks_per_cpu_min_now": now_common["networks_per_cpu_min"],
            "networks_per_cpu_min_then": then_common["networks_per_cpu_min"],
            "cpu_speedup_vs_baseline": round(now_common["networks_per_cpu_min"] / then_common["networks_per_cpu_min"], 3)
            if then_common["networks_per_cpu_min"] else None,
            "then": then_common,
        }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
