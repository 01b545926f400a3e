"""Rule hyperparameters that are not in the paper, chosen on a validation split (never the test set).

Two rules have a constant this project had to choose: burstprop's burst-nonlinearity slope
``beta`` and SoftHebb's competition temperature ``temperature`` (tau). For every candidate value
this trains the rule's default variant on a validation carve-out of each task's *training* split
(:func:`training_zoo.tasks.validation_split`: 20 % of the training examples held out, the test
split not loaded into the run at all), over the same small learning-rate sweep per optimizer
as tests/test_zoo_learning.py, and scores it by the best network's validation accuracy, per
task, architecture family and seed. The candidates' mean scores are compared over the same
cells (paired): the rule's current default is kept unless another value beats it by more than
twice the standard error of the paired differences; then that value is the suggested default.

Writes a table into docs/rules.md (between the ``rule-hyperparameters`` markers) and prints
the results as JSON.

Usage: python benchmarks/rule_hyperparameters.py [--tasks digits,mnist5k_14,mnist1d] [--seeds 0,1,2]
       [--families mlp,resmlp] [--epochs 5] [--rules burstprop,hebbian] [--save out.json]
       [--from-json out.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.learned_fraction import replace_section  # noqa: E402
from training_zoo.baselines import best_accuracy  # noqa: E402
from training_zoo.rules import get_rule  # noqa: E402
from training_zoo.tasks import load_task, validation_split  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- rule-hyperparameters:start -->", "<!-- rule-hyperparameters:end -->"
LRS = {"sgd": [0.01, 0.03, 0.1, 0.3, 1.0], "adam": [3e-4, 1e-3, 3e-3, 1e-2, 3e-2]}
ARCH = {"depth": 2, "width": 32, "activation": "relu"}
# rule -> (constructor argument, candidate values); the rule's own default is read from it
CANDIDATES = {
    "burstprop": ("beta", [0.03, 0.1, 0.3, 1.0, 3.0]),
    "hebbian": ("temperature", [0.01, 0.03, 0.1, 0.3, 1.0]),
}
VALIDATION_FRACTION = 0.2


def default_value(rule_id: str) -> float:
    name, _ = CANDIDATES[rule_id]
    return float(get_rule(rule_id)().hyperparameters()[name])


def sweep(rule_id: str, tasks: list[str], families: list[str], seeds: list[int], epochs: float) -> list[dict]:
    name, values = CANDIDATES[rule_id]
    rows = []
    for tname in tasks:
        task = validation_split(load_task(tname), VALIDATION_FRACTION)
        for family in families:
            for seed in seeds:
                for v in values:
                    t0 = time.perf_counter()
                    best = best_accuracy(get_rule(rule_id)(**{name: v}), {"family": family, **ARCH}, task,
                                         m_lrs=LRS, epochs=epochs, seed=seed)
                    rows.append({"rule": rule_id, "value": v, "task": tname, "arch_family": family,
                                 "seed": seed, "validation_accuracy": best["accuracy"],
                                 "optimizer": best.get("optimizer"), "lr": best.get("lr"),
                                 "seconds": round(time.perf_counter() - t0, 1)})
                    logging.info("%s %s=%g %s %s seed %d: validation accuracy %.3f (%s lr=%s, %.0f s)",
                                 rule_id, name, v, tname, family, seed, best["accuracy"],
                                 best.get("optimizer"), best.get("lr"), rows[-1]["seconds"])
    return rows


def choose(rows: list[dict], current: float) -> dict:
    """Mean validation accuracy per value over the same cells; keep ``current`` unless beaten
    by more than twice the standard error of the paired differences."""
    cell = lambda r: (r["task"], r["arch_family"], r["seed"])  # noqa: E731
    values = sorted({r["value"] for r in rows})
    acc = {v: {cell(r): r["validation_accuracy"] for r in rows if r["value"] == v} for v in values}
    cells = sorted(set.intersection(*(set(a) for a in acc.values())))
    mean = {v: float(np.mean([acc[v][c] for c in cells])) for v in values}
    best = max(values, key=lambda v: mean[v])
    diff = np.array([acc[best][c] - acc[current][c] for c in cells]) if current in acc else np.array([])
    se = float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else float("nan")
    margin = float(diff.mean()) if len(diff) else float("nan")
    chosen = best if current not in acc or (best != current and margin > 2 * se) else current
    return {"mean": {f"{v:g}": mean[v] for v in values}, "cells": len(cells), "best": best,
            "current": current, "margin": margin, "se": se, "chosen": chosen}


def render(results: dict) -> str:
    lines = [
        START,
        "## Rule constants chosen on a validation split",
        "",
        "Generated by `python benchmarks/rule_hyperparameters.py` "
        f"(commit {results['commit']}, {results['seconds'] / 60:.0f} min on this machine). Do not edit by hand.",
        "",
        "Constants the papers leave to the implementation, chosen without the test set: each "
        f"candidate trains on {100 - 100 * VALIDATION_FRACTION:.0f} % of a task's training split and is "
        f"scored on the other {100 * VALIDATION_FRACTION:.0f} % (`training_zoo.tasks.validation_split`), "
        f"best network of the learning-rate sweep (sgd {LRS['sgd']}, adam {LRS['adam']}), "
        f"{results['epochs']:g} epochs, {ARCH['depth']} x {ARCH['width']} {ARCH['activation']} "
        f"{' / '.join(results['families'])}, tasks {', '.join(results['tasks'])}, seeds "
        f"{', '.join(map(str, results['seeds']))}. The default is kept unless another value beats it "
        "by more than twice the standard error of the paired differences over those cells.",
        "",
        "| rule | constant | mean validation accuracy per value | default when run | best (margin +- se) | chosen |",
        "|---|---|---|---|---|---|",
    ]
    for rid, c in results["choice"].items():
        name = CANDIDATES[rid][0]
        per = ", ".join(f"{v}: {m:.3f}" for v, m in c["mean"].items())
        lines.append(f"| `{rid}` | `{name}` | {per} ({c['cells']} cells) | {c['current']:g} | "
                     f"{c['best']:g} ({c['margin']:+.3f} +- {c['se']:.3f}) | {c['chosen']:g} |")
    lines += ["", END, ""]
    return "\n".join(lines)


def write_section(path: Path, section: str) -> None:
    replace_section(path, section, START, END)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rules", default=",".join(CANDIDATES))
    p.add_argument("--tasks", default="digits,mnist5k_14,mnist1d")
    p.add_argument("--families", default="mlp,resmlp")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--epochs", type=float, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(ROOT / "docs" / "rules.md"))
    p.add_argument("--save", help="also save the rows and the choice as JSON here")
    p.add_argument("--from-json", help="re-render docs/rules.md's section from this script's saved JSON")
    args = p.parse_args()
    if args.from_json:
        write_section(Path(args.out), render(json.loads(Path(args.from_json).read_text())))
        return
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("training_zoo").setLevel(logging.ERROR)
    torch.set_num_threads(args.threads)
    tasks, families = args.tasks.split(","), args.families.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    commit = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True,
                            cwd=ROOT).stdout.strip()
    t0 = time.perf_counter()
    rows, choice = [], {}
    for rid in args.rules.split(","):
        r = sweep(rid, tasks, families, seeds, args.epochs)
        rows += r
        choice[rid] = choose(r, default_value(rid))
        if args.save:
            Path(args.save).write_text(json.dumps({"rows": rows, "choice": choice}))
    results = {"commit": commit, "seconds": round(time.perf_counter() - t0, 1), "tasks": tasks,
               "families": families, "seeds": seeds, "epochs": args.epochs, "rows": rows, "choice": choice}
    if args.save:
        Path(args.save).write_text(json.dumps(results))
    write_section(Path(args.out), render(results))
    print(json.dumps({k: v for k, v in results.items() if k != "rows"}))


if __name__ == "__main__":
    main()
