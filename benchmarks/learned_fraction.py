"""Which fraction of each rule's zoo networks learn, and at which learning-rate scale?

Trains a reduced default-style zoo (the ``default`` spec's architectures, optimizers, draws and
training lengths, on a subset of tasks, fewer networks a shard, every variant cycled over the
cells as the zoo does) with each optimizer's learning-rate range widened tenfold on both sides.
Every network is judged by the store's ``learned`` definition (training_zoo/learning_reference.json
bars). For every rule and optimizer it then reads off

- the learned fraction inside the spec's own two-decade window (``rule_lr_scale`` 1), and
- the scale (a power of sqrt(10) between 0.1 and 10) whose window holds the largest learned
  fraction: the suggested ``rule_lr_scale`` for zoo_specs/default.yaml;

and per variant the fraction at the suggested scales. Writes the table into docs/rules.md
(between the ``learned-fraction`` markers) and prints the results as JSON.

With ``--store URL`` it trains nothing and reads a zoo instead (e.g. the pipeline's
``default`` zoo): the learned fraction per rule, variant, architecture family, task, optimizer
and training length of the networks in the store, as the store flagged them or, with
``--rejudge``, judged again against the bars shipped now (a store written before a task had
its bar holds the fallback for it). Writes its own section (``learned-fraction-zoo`` markers).
With ``--windows`` it instead finds, per rule and optimizer, the one-decade learning-rate window
where the store's networks learn most (``learned-fraction-windows`` markers): where the default
spec's ``hyperparameters.rule_lr`` windows come from. ``--around F`` trains each rule over its
spec window widened F-fold on both sides and finds the best window in that
(``learned-fraction-windows-around`` markers); ``--verify`` trains the spec as it is.

Usage: python benchmarks/learned_fraction.py [--tasks digits] [--networks 8] [--rules a,b]
       [--reference training_zoo/learning_reference.json] [--from-json results.json]
       python benchmarks/learned_fraction.py --store /path/zoo.zarr [--rejudge] [--name default] [--windows]
       python benchmarks/learned_fraction.py --verify [--seed 1] | --around 3.16 [--optimizers sgd,momentum]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import subprocess
import time
from pathlib import Path

import numpy as np
import torch

from training_zoo.baselines import REFERENCE_PATH, bar_from, learned, learned_threshold
from training_zoo.spec import expand_spec, load_spec

ROOT = Path(__file__).resolve().parents[1]
WIDEN = 10.0
SCALES = [10.0 ** k for k in (-1.0, -0.5, 0.0, 0.5, 1.0)]
START, END = "<!-- learned-fraction:start -->", "<!-- learned-fraction:end -->"


def _job(args: tuple) -> list[dict]:
    shard, threads = args
    from training_zoo.shard import train_shard

    torch.set_num_threads(threads)
    logging.getLogger("training_zoo").setLevel(logging.ERROR)
    t0 = time.perf_counter()
    try:
        if shard["rule"] == "_readout_only":
            from training_zoo.baselines import ReadoutOnly

            res = train_shard({**shard, "rule": "backprop"}, rule=ReadoutOnly())
        else:
            res = train_shard(shard)
        acc, div, error = res["test_accuracy"].float().tolist(), res["diverged"].tolist(), None
    except Exception as err:  # a broken rule/architecture pair is reported, not hidden
        acc, div, error = [float("nan")] * len(shard["lrs"]), [True] * len(shard["lrs"]), f"{type(err).__name__}: {err}"
    sec = time.perf_counter() - t0
    return [{"rule": shard["rule"], "variant": shard["variant"], "optimizer": shard["optimizer"],
             "task": shard["task"], "arch_family": shard["arch"]["family"], "lr": lr, "epochs": shard["epochs"],
             "accuracy": a, "diverged": bool(d), "error": error, "seconds": sec}
            for lr, a, d in zip(shard["lrs"], acc, div)]


def _mean(values: list) -> float:
    return float(np.mean(values)) if values else float("nan")


def analyse(rows: list[dict], lr_lo: dict, reference: str | None = None, verify: bool = False) -> dict:
    """Per rule x optimizer: fraction learned at scale 1 and at the best scale; per variant."""
    out: dict = {}
    for r in rows:  # decades above the spec's lower bound, the spec window is [0, 2]
        # (a --verify run draws inside the spec's own windows: every network counts, at scale 1)
        r["u"] = 1.0 if verify else math.log10(r["lr"] / lr_lo[r["optimizer"]])
    own = {}
    if reference == "self":  # bars from this run: backprop and readout-only inside the spec window
        for key in {(r["task"], r["arch_family"], r["optimizer"]) for r in rows}:
            acc = {k: [r["accuracy"] for r in rows if (r["task"], r["arch_family"], r["optimizer"]) == key
                       and r["rule"] == k and not r["diverged"] and 0 <= r["u"] <= 2]
                   for k in ("backprop", "_readout_only")}
            if acc["backprop"] and acc["_readout_only"]:
                own[key] = bar_from(float(np.median(acc["_readout_only"])), float(np.median(acc["backprop"])))
    for r in rows:  # judged here, so the bars can be (re)computed after the sweep
        key = (r["task"], r["arch_family"], r["optimizer"])
        r["bar"] = own.get(key) if reference == "self" else learned_threshold(*key, reference)
        r["learned"] = learned(r["accuracy"], r["diverged"], r["bar"]) if r["error"] is None else False
    rows = [r for r in rows if r["learned"] is not None and r["rule"] != "_readout_only"]
    for rule in sorted({r["rule"] for r in rows}):
        entry: dict = {"optimizers": {}, "variants": {}}
        chosen: dict = {}
        for opt in sorted({r["optimizer"] for r in rows if r["rule"] == rule}):
            sub = [r for r in rows if r["rule"] == rule and r["optimizer"] == opt]
            fr = {}
            for s in SCALES:
                k = math.log10(s)
                win = [r["learned"] for r in sub if k <= r["u"] <= k + 2]
                fr[s] = (float(np.mean(win)) if win else float("nan"), len(win))
            best = max(SCALES, key=lambda s: (np.nan_to_num(fr[s][0], nan=-1), -abs(math.log10(s))))
            chosen[opt] = best
            entry["optimizers"][opt] = {"fraction_scale1": fr[1.0][0], "n_scale1": fr[1.0][1],
                                        "best_scale": round(best, 3), "fraction_best": fr[best][0],
                                        "n_best": fr[best][1], "by_scale": {f"{s:.3g}": fr[s][0] for s in SCALES}}
        inwin = [r for r in rows if r["rule"] == rule and
                 math.log10(chosen[r["optimizer"]]) <= r["u"] <= math.log10(chosen[r["optimizer"]]) + 2]
        scale1 = [r for r in rows if r["rule"] == rule and 0 <= r["u"] <= 2]
        entry["fraction_scale1"] = float(np.mean([r["learned"] for r in scale1])) if scale1 else float("nan")
        entry["fraction_best"] = float(np.mean([r["learned"] for r in inwin])) if inwin else float("nan")
        entry["n_best"] = len(inwin)
        for v in sorted({r["variant"] for r in inwin}):
            vs = [r["learned"] for r in inwin if r["variant"] == v]
            entry["variants"][v] = {"fraction_best": float(np.mean(vs)), "n": len(vs)}
        entry["by_arch_family"] = {
            f: float(np.mean([r["learned"] for r in inwin if r["arch_family"] == f]))
            for f in sorted({r["arch_family"] for r in inwin})}
        # does training longer help? (the spec draws 2-10 epochs per cell; split at the middle)
        mid = float(np.median([r["epochs"] for r in rows]))
        entry["by_epochs"] = {f"< {mid:.1f}": _mean([r["learned"] for r in inwin if r["epochs"] < mid]),
                              f">= {mid:.1f}": _mean([r["learned"] for r in inwin if r["epochs"] >= mid])}
        entry["errors"] = sorted({r["error"] for r in rows if r["rule"] == rule and r["error"]})
        out[rule] = entry
    return out


def render(results: dict) -> str:
    a = results["analysis"]
    start = START.replace("fraction", "fraction-verify") if results.get("verify") else START
    lines = [
        start,
        "## Which networks learn at the default spec's scales (`--verify`)" if results.get("verify")
        else "## Which networks learn (the store's `learned` flag): learning-rate sweep",
        "",
        "Generated by `python benchmarks/learned_fraction.py` "
        f"(commit {results['commit']}, {results['seconds'] / 60:.0f} min on this machine). Do not edit by hand.",
        "",
        "A zoo network has **learned** when its final test accuracy is at least the baseline",
        "(frozen random hidden layers, readout trained) plus half of (backprop's median minus the",
        "baseline) on the same task, architecture family and optimizer (docs/zoo.md, \"Which networks",
        "learned\"). Bars here: " + ("this run's own backprop and readout-only networks inside the spec's "
        "learning-rate window (same cells, same draws)." if results.get("reference") == "self"
        else "training_zoo/learning_reference.json."),
        "",
        f"Reduced default-style zoo: the `default` spec's optimizers and draws (spec seed {results.get('seed', 0)}), "
        "architectures "
        + "; ".join(f"{a['family']} (depth {a.get('depth', '-')}, width {a.get('width', '-')})"
                    if a["family"] != "cnn" else f"cnn (channels {a.get('channels')})"
                    for a in results.get("architectures", [])) + ", on "
        + f"{', '.join(results['tasks'])}, {results['networks']} networks a shard, variants cycled over the "
        + (f"cells, the spec's own learning-rate ranges, per-rule windows (`rule_lr`) and training lengths "
           f"({results['n_networks']} networks): "
           "the fraction of each rule's networks the spec gives, every network counted (*learned* column; "
           "the scale columns do not apply). Fractions rest on few networks per cell (n shown): read them "
           "to +-0.15." if results.get("verify") else
           f"cells, learning-rate ranges widened {WIDEN:g}x on both sides ({results['n_networks']} networks). "
           "*At scale 1* counts the networks inside the spec's own two-decade window; *best scale* is the "
           "window (shifted by a power of sqrt(10)) with the largest learned fraction, the `rule_lr_scale` "
           "per optimizer this run suggests (the default spec now places one-decade windows instead, "
           "`hyperparameters.rule_lr`: `--store ... --windows`, `--around`). Fractions rest on few networks "
           "per cell (n shown): read them to +-0.15."),
        "",
        "| rule | learned at scale 1 | learned at best scale (n) | best scale sgd / momentum / adam | by variant (best scale) | by arch family | by training length (epochs) |",
        "|---|---|---|---|---|---|---|",
    ]
    for rule, e in a.items():
        sc = " / ".join(f"{e['optimizers'][o]['best_scale']:g}" if o in e["optimizers"] else "-"
                        for o in ("sgd", "momentum", "adam"))
        var = ", ".join(f"{v} {x['fraction_best']:.2f} ({x['n']})" for v, x in e["variants"].items())
        fam = ", ".join(f"{f} {x:.2f}" for f, x in e["by_arch_family"].items())
        eps = ", ".join(f"{k}: {x:.2f}" for k, x in e.get("by_epochs", {}).items())
        flag = "" if e["fraction_best"] >= 0.8 else " **(< 0.8)**"
        err = f"; errors: {'; '.join(x[:60] for x in e['errors'])}" if e["errors"] else ""
        lines.append(f"| `{rule}` | {e['fraction_scale1']:.2f} | {e['fraction_best']:.2f}{flag} ({e['n_best']}) | "
                     f"{sc} | {var} | {fam}{err} | {eps} |")
    key = "fraction_scale1" if results.get("verify") else "fraction_best"
    ok = [r for r, e in a.items() if e[key] >= 0.8]
    short = [f"{r} {e[key]:.2f}" for r, e in a.items() if e[key] < 0.8]
    lines += ["", f"At or above 0.8: {', '.join(ok) or 'none'}. Below (their fraction as measured): "
              f"{', '.join(short) or 'none'}."]
    lines += ["", END.replace("fraction", "fraction-verify") if results.get("verify") else END, ""]
    return "\n".join(lines)


def write_section(path: Path, section: str, verify: bool = False) -> None:
    start, end = (m.replace("fraction", "fraction-verify") for m in (START, END)) if verify else (START, END)
    replace_section(path, section, start, end)


def replace_section(path: Path, section: str, start: str, end: str) -> None:
    """Put ``section`` (which starts with ``start`` and ends with ``end``) in place of the page's
    section between those markers, or append it."""
    text = path.read_text() if path.exists() else ""
    if start in text and end in text:
        head, rest = text.split(start, 1)
        text = head + section.rstrip("\n") + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)


ZOO_START, ZOO_END = "<!-- learned-fraction-zoo:start -->", "<!-- learned-fraction-zoo:end -->"


def store_rows(url: str, rejudge: bool = False, reference: str | None = None) -> list[dict]:
    """One row per complete network of the store at ``url`` (diverged ones count as not learned)."""
    from rulefinder.classify.dataset import learned_labels
    from rulefinder.store.zoo_store import ZooStore

    table = ZooStore.open(url, mode="r").networks()
    keep = np.asarray(table["complete"].values, bool)
    flag = learned_labels(table)
    stored_bar = np.asarray(table["learned_threshold"].values, dtype=np.float64) if "learned_threshold" in table \
        else np.full(len(flag), np.nan)
    rows = []
    for i in np.flatnonzero(keep):
        hyper = json.loads(str(table["hyperparameters"].values[i]) or "{}")
        r = {k: str(table[k].values[i]) for k in ("rule", "variant", "task", "arch_family", "optimizer")}
        r.update(accuracy=float(table["final_accuracy"].values[i]), diverged=bool(table["diverged"].values[i]),
                 epochs=float(hyper.get("epochs", float("nan"))), lr=float(hyper.get("lr", float("nan"))))
        bar = learned_threshold(r["task"], r["arch_family"], r["optimizer"], reference) if rejudge else None
        r["learned"] = learned(r["accuracy"], r["diverged"], bar) if bar is not None else bool(flag[i])
        r["bar_from"] = ("reference now" if bar is not None else "reference when trained"
                         if np.isfinite(stored_bar[i]) else "fallback (no bar when trained)")
        rows.append(r)
    return rows


def analyse_store(rows: list[dict]) -> dict:
    """Learned fraction per rule, and within each rule per variant, family, task, optimizer, length."""
    out = {}
    for rule in sorted({r["rule"] for r in rows}):
        sub = [r for r in rows if r["rule"] == rule]
        mid = float(np.median([r["epochs"] for r in sub]))  # per rule: rule_epochs_scale stretches some
        by = lambda key: {v: (_mean([r["learned"] for r in sub if r[key] == v]),  # noqa: E731
                              sum(r[key] == v for r in sub)) for v in sorted({r[key] for r in sub})}
        out[rule] = {"fraction": _mean([r["learned"] for r in sub]), "n": len(sub),
                     "variants": by("variant"), "arch_family": by("arch_family"), "task": by("task"),
                     "optimizer": by("optimizer"),
                     "epochs": {f"< {mid:.1f}": _mean([r["learned"] for r in sub if r["epochs"] < mid]),
                                f">= {mid:.1f}": _mean([r["learned"] for r in sub if r["epochs"] >= mid])},
                     "lr_thirds": {}}
        for opt in sorted({r["optimizer"] for r in sub}):
            # thirds of the learning-rate window the networks drew (every rule meets the same draws),
            # per task: a spec's task_lr_scale moves a task's whole window
            pos = []
            for task in sorted({r["task"] for r in sub if r["optimizer"] == opt}):
                cell = [r for r in sub if r["optimizer"] == opt and r["task"] == task]
                lrs = np.log10([r["lr"] for r in cell])
                span = float(lrs.max() - lrs.min()) or 1.0
                pos += [((x - lrs.min()) / span, r["learned"]) for x, r in zip(lrs, cell)]
            out[rule]["lr_thirds"][opt] = [_mean([y for q, y in pos if k / 3 <= q < (k + 1) / 3 or (k == 2 and q == 1)])
                                           for k in range(3)]
    return out


def render_store(results: dict) -> str:
    a = results["analysis"]
    fmt = lambda d: ", ".join(f"{k} {f:.2f}" + (f" ({n})" if n is not None else "")  # noqa: E731
                              for k, (f, n) in d.items())
    lines = [
        ZOO_START,
        f"## Which networks learned in the `{results['name']}` zoo",
        "",
        f"Generated by `python benchmarks/learned_fraction.py --store ...{' --rejudge' if results['rejudge'] else ''}` "
        f"(commit {results['commit']}) from the store of the `{results['name']}` zoo "
        f"({results['n_networks']} complete networks; diverged networks count as not learned). "
        "Do not edit by hand.",
        "",
        ("`learned` judged again against the bars shipped at that commit "
         "(training_zoo/learning_reference.json) for every task that has one; "
         if results["rejudge"] else "`learned` as the store flagged it when the zoo was trained; ")
        + "bars by task: " + ", ".join(f"{t} {src}" for t, src in results["bar_sources"].items()) + ".",
        "",
        "| rule | learned (n) | by variant (n) | by arch family | by task | by optimizer | by training length (epochs) "
        "| by learning rate: low / mid / high third of the window |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for rule, e in a.items():
        flag = "" if e["fraction"] >= 0.8 else " **(< 0.8)**"
        nolen = lambda d: {k: (v[0], None) for k, v in d.items()}  # noqa: E731
        eps = ", ".join(f"{k}: {x:.2f}" for k, x in e["epochs"].items())
        thirds = "; ".join(f"{o} " + " / ".join(f"{x:.2f}" for x in v) for o, v in e["lr_thirds"].items())
        lines.append(f"| `{rule}` | {e['fraction']:.2f}{flag} ({e['n']}) | {fmt(e['variants'])} | "
                     f"{fmt(nolen(e['arch_family']))} | {fmt(nolen(e['task']))} | {fmt(nolen(e['optimizer']))} | {eps} "
                     f"| {thirds} |")
    ok = [r for r, e in a.items() if e["fraction"] >= 0.8]
    short = [f"{r} {e['fraction']:.2f}" for r, e in a.items() if e["fraction"] < 0.8]
    lines += ["", f"At or above 0.8: {', '.join(ok) or 'none'}. Below: {', '.join(short) or 'none'}.",
              "", ZOO_END, ""]
    return "\n".join(lines)


WIN_START, WIN_END = "<!-- learned-fraction-windows:start -->", "<!-- learned-fraction-windows:end -->"


def analyse_windows(rows: list[dict], width: float = 1.0, step: float = 0.05, margin: float = 0.2) -> dict:
    """Per rule and optimizer: the ``width``-decade learning-rate window where a zoo's networks
    learn most often, for ``rule_lr_window`` in a zoo spec.

    A logistic regression of ``learned`` on log10(lr), its square, the training length and
    their product smooths the noisy bins (a few hundred networks per rule and optimizer); each
    candidate window is scored by the mean predicted probability over it at the store's longest
    training length. The chosen window must lie within the learning rates the store drew: one
    that ends within ``margin`` decades of the top (or bottom) of that range is flagged, since the
    optimum may lie beyond (the quadratic bends down near an edge even where the data do not).
    ``observed`` is the plain fraction of the store's networks inside the window (all lengths,
    and the longer half)."""
    from sklearn.linear_model import LogisticRegression

    out: dict = {}
    for rule in sorted({r["rule"] for r in rows}):
        out[rule] = {}
        for opt in sorted({r["optimizer"] for r in rows if r["rule"] == rule}):
            sub = [r for r in rows if r["rule"] == rule and r["optimizer"] == opt]
            x = np.log10([r["lr"] for r in sub])
            e = np.array([r["epochs"] for r in sub], dtype=np.float64)
            y = np.array([r["learned"] for r in sub], dtype=bool)
            lo, hi, e_top, e_mid = float(x.min()), float(x.max()), float(e.max()), float(np.median(e))
            mu, sd = np.array([x.mean(), e.mean()]), np.array([x.std() or 1.0, e.std() or 1.0])

            def design(xx, ee):
                z = (np.column_stack([xx, ee]) - mu) / sd
                return np.column_stack([z[:, 0], z[:, 0] ** 2, z[:, 1], z[:, 0] * z[:, 1]])

            model = LogisticRegression(C=1.0).fit(design(x, e), y) if 0 < y.sum() < len(y) else None
            starts = np.arange(lo, max(lo, hi - width) + 1e-9, step)

            def score(a):
                grid = np.linspace(a, a + width, 41)
                if model is None:
                    return float(y.mean())
                return float(model.predict_proba(design(grid, np.full_like(grid, e_top)))[:, 1].mean())

            a = max(starts, key=score)
            inside = (x >= a) & (x <= a + width)
            longer = inside & (e >= e_mid)
            out[rule][opt] = {
                "window": [float(10 ** a), float(10 ** (a + width))], "predicted": score(a),
                "epochs_at": e_top, "observed": _mean(list(y[inside])), "n": int(inside.sum()),
                "observed_longer": _mean(list(y[longer])), "n_longer": int(longer.sum()),
                "drawn": [float(10 ** lo), float(10 ** hi)], "fraction_drawn": float(y.mean()),
                "edge": "top" if a + width >= hi - margin else "bottom" if a <= lo + margin else None,
            }
    return out


def _window_markers(around: bool) -> tuple[str, str]:
    return tuple(m.replace("windows", "windows-around") for m in (WIN_START, WIN_END)) if around else (WIN_START, WIN_END)


def render_windows(results: dict) -> str:
    w = results["windows"]
    around = results.get("around")
    start, end = _window_markers(bool(around))
    lines = [start]
    if around:
        lines += [
            "## Around the default spec's windows: a training sweep (`--around`)",
            "",
            f"Generated by `python benchmarks/learned_fraction.py --around {around:g}` (commit {results['commit']}, "
            f"{results['seconds'] / 60:.0f} min on this machine): the default spec's draws on {', '.join(results['tasks'])}, "
            f"{results['networks']} networks a shard, optimizers {', '.join(results['optimizers'])}, each rule's "
            f"learning-rate window widened {around:g}x on both sides ({results['n_networks']} networks, judged against "
            "training_zoo/learning_reference.json). Do not edit by hand.",
            ""]
    else:
        lines += [
            f"## Where in the learning-rate range the `{results['name']}` zoo learns (`--windows`)",
            "",
            f"Generated by `python benchmarks/learned_fraction.py --store ... --windows{' --rejudge' if results['rejudge'] else ''}` "
            f"(commit {results['commit']}) from the store of the `{results['name']}` zoo ({results['n_networks']} networks). "
            "Do not edit by hand.",
            ""]
    lines += [
        "Per rule and optimizer, the one-decade window with the largest predicted learned fraction "
        "(logistic regression of `learned` on log10(lr), its square, the training length and their product; "
        "predicted at the store's longest runs, *predicted* column), the plain fraction of the store's networks "
        "inside it (all lengths / longer half, n), and the fraction over everything the store drew. *edge*: the "
        "window ends within 0.2 decade of the top or bottom of the drawn range, so the optimum may lie beyond it.",
        "",
        "| rule | optimizer | drawn lr | learned over drawn | best window | predicted (epochs) | observed in window: all (n) / longer half (n) | edge |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for rule, per in w.items():
        for opt, c in per.items():
            lines.append(
                f"| `{rule}` | {opt} | {c['drawn'][0]:.2g}-{c['drawn'][1]:.2g} | {c['fraction_drawn']:.2f} | "
                f"{c['window'][0]:.2g}-{c['window'][1]:.2g} | {c['predicted']:.2f} ({c['epochs_at']:.1f}) | "
                f"{c['observed']:.2f} ({c['n']}) / {c['observed_longer']:.2f} ({c['n_longer']}) | {c['edge'] or ''} |")
    lines += ["", end, ""]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--spec", default="default")
    p.add_argument("--tasks", default="digits")
    p.add_argument("--rules", help="comma-separated subset (default: every rule of the spec)")
    p.add_argument("--networks", type=int, default=8)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--reference", default=str(REFERENCE_PATH),
                   help="bars file; 'self' = bars from this run's own backprop and readout-only networks")
    p.add_argument("--families", help="comma-separated architecture families (default: the spec's)")
    p.add_argument("--max-width", type=int, help="drop wider options of the spec's architectures (a cheaper zoo)")
    p.add_argument("--max-depth", type=int, help="drop deeper options of the spec's architectures")
    p.add_argument("--out", default=str(ROOT / "docs" / "rules.md"))
    p.add_argument("--verify", action="store_true",
                   help="train with the spec's own ranges, windows and scales (no widening): the learned "
                        "fraction the spec gives, all networks counted")
    p.add_argument("--save", help="also save the raw rows and the analysis as JSON here")
    p.add_argument("--from-json", help="re-render from this script's saved JSON")
    p.add_argument("--store", help="read the learned flags of this zoo store instead of training")
    p.add_argument("--rejudge", action="store_true", help="with --store: judge against the bars shipped now")
    p.add_argument("--name", default="default", help="with --store: the zoo's name, for the page")
    p.add_argument("--windows", action="store_true",
                   help="with --store: the one-decade learning-rate window per rule and optimizer where the "
                        "store's networks learn most (its own section of the page; the zoo section is left alone)")
    p.add_argument("--around", type=float,
                   help="train each rule over its spec window widened this factor on both sides (rules without "
                        "one: the optimizer's range) and find the best one-decade window in it (--windows table)")
    p.add_argument("--optimizers", help="comma-separated subset of the spec's optimizers")
    p.add_argument("--seed", type=int, help="the spec seed (fresh cells and draws; default: the spec's own)")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.store:
        rows = store_rows(args.store, args.rejudge, None if args.reference == str(REFERENCE_PATH) else args.reference)
        commit = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True,
                                cwd=ROOT).stdout.strip()
        sources = {t: sorted({r["bar_from"] for r in rows if r["task"] == t}) for t in sorted({r["task"] for r in rows})}
        results = {"name": args.name, "store": args.store, "rejudge": args.rejudge, "commit": commit,
                   "n_networks": len(rows), "bar_sources": {t: "/".join(v) for t, v in sources.items()},
                   "analysis": analyse_store(rows)}
        if args.windows:
            results["windows"] = analyse_windows(rows)
        if args.save:
            Path(args.save).write_text(json.dumps({**results, "rows": rows}))
        if args.windows:
            replace_section(Path(args.out), render_windows(results), WIN_START, WIN_END)
        else:
            replace_section(Path(args.out), render_store(results), ZOO_START, ZOO_END)
        print(json.dumps(results))
        return
    torch.set_num_threads(args.threads)
    spec = dict(load_spec(args.spec))
    lr_lo = {o: float(v[0]) for o, v in spec["hyperparameters"]["lr"].items()}
    if args.from_json:
        results = json.loads(Path(args.from_json).read_text())
        results["analysis"] = analyse(results["rows"], lr_lo, results.get("reference", args.reference), results.get("verify", False))
    else:
        spec["tasks"] = args.tasks.split(",")
        spec["networks_per_shard"] = args.networks
        if not args.verify:
            spec["rule_lr_scale"] = {}
        if args.rules:
            spec["rules"] = args.rules.split(",")
        if args.optimizers:
            spec["optimizers"] = args.optimizers.split(",")
        if args.seed is not None:
            spec["seed"] = args.seed
        archs = [dict(a) for a in spec["architectures"]
                 if not args.families or a.get("family", "mlp") in args.families.split(",")]
        for a in archs:
            if args.max_width and "width" in a:
                a["width"] = [w for w in a["width"] if w <= args.max_width] or [min(a["width"])]
            if args.max_depth and "depth" in a:
                a["depth"] = [d for d in a["depth"] if d <= args.max_depth] or [min(a["depth"])]
        spec["architectures"] = archs
        if args.around:
            f, hp = args.around, spec["hyperparameters"]
            spec["hyperparameters"] = dict(hp, lr={o: [v[0] / f, v[1] * f] for o, v in hp["lr"].items()}, rule_lr={
                r: {o: [v[0] / f, v[1] * f] for o, v in per.items()} for r, per in (hp.get("rule_lr") or {}).items()})
        elif not args.verify:
            # the sweep widens the optimizers' ranges for every rule alike: no per-rule windows
            spec["hyperparameters"] = dict(spec["hyperparameters"], rule_lr={}, task_lr_scale={}, lr={
                o: [v[0] / WIDEN, v[1] * WIDEN] for o, v in spec["hyperparameters"]["lr"].items()})
        shards = expand_spec(spec)
        # the rules are imported now: the commit they come from (and whether the tree had edits)
        commit = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True,
                                cwd=ROOT).stdout.strip()
        jobs = [(s.to_dict(), args.threads) for s in shards]
        if args.reference == "self":  # the readout-only baseline on backprop's cells, spec window
            for s in shards:
                if s.rule == "backprop":
                    d = s.to_dict()
                    jobs.insert(0, ({**d, "rule": "_readout_only"}, args.threads))
        t0 = time.perf_counter()
        if args.workers > 1:
            import multiprocessing as mp

            results_iter = mp.get_context("spawn").Pool(args.workers).imap_unordered(_job, jobs)
        else:
            results_iter = map(_job, jobs)
        rows = []
        for i, shard_rows in enumerate(results_iter):
            rows += shard_rows
            r = shard_rows[0]
            logging.info("[%d/%d] %s/%s %s %s: median accuracy %.3f (%.0f s)%s", i + 1, len(jobs), r["rule"],
                         r["variant"], r["optimizer"], r["arch_family"],
                         float(np.median([x["accuracy"] for x in shard_rows])), r["seconds"],
                         f" {r['error']}" if r["error"] else "")
            if args.save and (i + 1) % 10 == 0:
                Path(args.save).write_text(json.dumps({"rows": rows}))
        results = {"tasks": spec["tasks"], "seed": int(spec.get("seed", 0)), "architectures": spec["architectures"], "reference": args.reference, "networks": args.networks, "n_networks": len(rows), "commit": commit,
                   "seconds": round(time.perf_counter() - t0, 1), "rows": rows,
                   "verify": args.verify, "analysis": analyse(rows, lr_lo, args.reference, args.verify)}
        if args.around:  # analyse() judged the rows; the windows are what this mode is for
            results.update(around=args.around, optimizers=spec["optimizers"], windows=analyse_windows(rows))
    if args.save:
        Path(args.save).write_text(json.dumps(results))
    if results.get("around"):
        replace_section(Path(args.out), render_windows(results), *_window_markers(True))
    else:
        write_section(Path(args.out), render(results), bool(results.get("verify")))
    print(json.dumps({k: v for k, v in results.items() if k != "rows"}))


if __name__ == "__main__":
    main()
