"""Rule accuracy against zoo size: the scale curve of issues #8 and #12. Prints one JSON object.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/scale_curve.py --store /data/zoo10k.zarr \
        --cache /data/rows --sizes 1000,2000,5000,10000

The test set is the held-out split of ``benchmarks/train_default.py`` (per rule, ``--holdout`` of
its shards, same seed), so the curve and the shipped model's metrics share one test set and no
shard is on both sides. The training sets are nested random subsets of whole training shards
(a shard is added whole or not at all) holding about ``--sizes`` networks; the largest size
may be capped by what the zoo has. Each point fits ``RuleIdentifier`` (its defaults, logistic
regression, no calibration folds: the curve is about the rule, not the calibration) on the full
recordings of the training networks, learned or not, and scores every held-out network's full
recording. Headline: rule balanced accuracy on the learned held-out networks.

Feature rows come from ``--cache`` (``rulefinder.classify.cache``; ``train_default.py --cache``
fills it) and are computed and cached for any network missing there.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.train_default import balanced_accuracy, load_zoo  # noqa: E402
from rulefinder.classify.cache import network_rows  # noqa: E402
from rulefinder.classify.estimator import RuleIdentifier  # noqa: E402

TARGETS = ("rule", "family", "optimizer")


def nested_shard_subsets(shards: np.ndarray, train: np.ndarray, sizes: list[int], seed: int) -> list[np.ndarray]:
    """Masks over networks: for each size, the first training shards of one seeded order whose
    networks add up to at least ``size`` (so every subset contains the smaller ones)."""
    rng = np.random.default_rng(seed)
    names, sizes_of = np.unique(shards[train], return_counts=True)
    perm = rng.permutation(names.size)
    order, counts = names[perm], sizes_of[perm]
    cum = np.cumsum(counts)
    masks = []
    for size in sizes:
        k = int(np.searchsorted(cum, size)) + 1
        masks.append(train & np.isin(shards, order[:k]))
    return masks


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--store", required=True)
    ap.add_argument("--cache", required=True)
    ap.add_argument("--sizes", default="1000,2000,5000,10000")
    ap.add_argument("--holdout", type=float, default=0.2)
    ap.add_argument("--split", choices=("heldout", "lofo_arch"), default="heldout",
                    help="heldout: train_default's held-out shards; lofo_arch: each architecture family held out in "
                         "turn (training subsets drawn from the other families, predictions pooled over the folds).")
    ap.add_argument("--params", default="{}", help="RuleIdentifier parameters as JSON (calibration_folds defaults to 0).")
    ap.add_argument("--max-networks", type=int, default=0, help="Use at most this many networks (as train_default.py picks them).")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    store, table, held = load_zoo(args.store, args.max_networks, args.holdout, args.seed)
    ids = table["network"].values.astype(str)
    shards = table["shard"].values.astype(str)
    labels = {t: table[t].values.astype(str) for t in TARGETS}
    learned = table["learned"].values.astype(bool)
    params = {"calibration_folds": 0, **json.loads(args.params)}
    probe = RuleIdentifier(**params)

    t0 = time.perf_counter()
    rows = network_rows(store, ids.tolist(), probe.n_times, probe.feature_set, args.cache, progress=True)
    rec = rows.coords["recording"].values
    features_s = time.perf_counter() - t0

    def subset(mask: np.ndarray):
        keep = np.flatnonzero(mask)
        part = rows.isel(sample=np.flatnonzero(np.isin(rec, keep)))
        return part.assign_coords(recording=("sample", np.searchsorted(keep, part.coords["recording"].values))), keep

    if args.split == "heldout":
        folds = [(~held, held)]
    else:
        family = table["arch_family"].values.astype(str)
        folds = [(family != f, family == f) for f in np.unique(family)]
    sizes = [int(s) for s in args.sizes.split(",")]
    all_test = np.concatenate([np.flatnonzero(te) for _, te in folds])
    out = {
        "store": args.store,
        "split": (f"held-out shards: {args.holdout:.0%} of each rule's shards (seed {args.seed}), full recordings"
                  if args.split == "heldout" else "lofo_arch: each architecture family held out in turn, predictions pooled")
                 + "; training: nested random subsets of whole training shards",
        "n_networks": int(ids.size),
        "n_learned": int(learned.sum()),
        "n_test": int(all_test.size),
        "n_test_learned": int(learned[all_test].sum()),
        "n_rules": int(np.unique(labels["rule"]).size),
        "params": params,
        "features_s": round(features_s, 1),
        "points": [],
    }
    # pred[size][target] over all_test (the folds' test networks in fold order), fold by fold
    preds: dict[int, dict[str, np.ndarray]] = {}
    sizes_fit: dict[int, list[dict]] = {}
    start = 0
    for train_mask, test_mask in folds:
        test_rows, test_idx = subset(test_mask)
        here = slice(start, start + test_idx.size)
        start += test_idx.size
        for size, mask in zip(sizes, nested_shard_subsets(shards, train_mask, sizes, args.seed), strict=True):
            t0 = time.perf_counter()
            train_rows, train_idx = subset(mask)
            est = RuleIdentifier(**params).fit_features(train_rows, {t: labels[t][train_idx] for t in TARGETS},
                                                        shards[train_idx])
            proba = est.predict_proba_features(test_rows)
            slot = preds.setdefault(size, {t: np.empty(all_test.size, dtype=object) for t in TARGETS})
            for t in TARGETS:
                slot[t][here] = est.classes_[t][proba[t].argmax(axis=1)]
            sizes_fit.setdefault(size, []).append({
                "n_train_networks": int(train_idx.size), "n_train_learned": int(learned[train_idx].sum()),
                "train_networks_per_rule": train_idx.size / np.unique(labels["rule"][train_idx]).size,
                "fit_s": time.perf_counter() - t0})
            print(json.dumps({"size": size, **sizes_fit[size][-1]}), file=sys.stderr, flush=True)
    test_learned = learned[all_test]
    for size in sizes:
        fits = sizes_fit[size]
        point = {
            "target_size": size,
            "n_train_networks": round(float(np.mean([f["n_train_networks"] for f in fits])), 1),
            "n_train_learned": round(float(np.mean([f["n_train_learned"] for f in fits])), 1),
            "train_networks_per_rule": round(float(np.mean([f["train_networks_per_rule"] for f in fits])), 1),
        }
        for t in TARGETS:
            truth, pred = labels[t][all_test], preds[size][t].astype(str)
            point[f"{t}_bacc_learned"] = round(balanced_accuracy(truth[test_learned], pred[test_learned]), 4)
            point[f"{t}_bacc_all"] = round(balanced_accuracy(truth, pred), 4)
        point["fit_s"] = round(float(np.sum([f["fit_s"] for f in fits])), 1)
        out["points"].append(point)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
