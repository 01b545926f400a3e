"""Train the packaged ``default`` model from a zoo store, reproducibly, and write it with its card.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/train_default.py \
        --store runs/probe.zarr --spec ../shared/research/probe.yaml \
        --out rulefinder/classify/models/default

``--store`` (with its ``--spec``) may be given several times: the zoos' networks are pooled, a
zoo grown in several runs or at several settings (network ids must not repeat across stores).

Steps (all seeded by --seed):

1. The store's complete, non-diverged networks; per rule, ``--holdout`` of its shards are held
   out (never one shard on both sides). With several stores the first store's split is exactly
   the split it would get alone, and a later store's shard goes with the first store's shard of
   the same name up to its spec-seed suffix (``<cell>.r1.s2`` with ``<cell>.r1``: same rule,
   optimizer, task, architecture and replicate on the same side); shards without a counterpart
   are drawn at the same rate.
2. Training recordings: each training network's full recording plus ``--draws`` virtual
   experiments drawn from the evaluation grid's range (units per area, sessions, noise), so the
   model sees what it will be shown, plus ``--drop-output-draws`` more such draws with the
   ``output`` area removed: a lab seldom records a network's output units, and a model that
   only ever saw them reads the kind of output unit (logits, softmax, energy-model neurons) as
   the rule (docs/results.md, "Out-of-zoo recordings"), plus ``--stimuli-draws`` more with a
   subset of the stimuli (``keep_stimuli``, a count drawn per network from ``--stimuli-range``;
   every other one without the output area; with ``--stimuli-offset`` a baseline too): a lab
   shows 16 or 24 stimuli where the zoo recorded 64.
3. ``RuleIdentifier`` (its defaults, or ``--params`` JSON) fitted with the shard as group.
4. The expected-accuracy table: every held-out network through every grid cell
   (units per area x sessions x noise, one seeded draw each); rule accuracy, balanced accuracy
   and the most confused rule pairs per cell. Metrics on the held-out networks' full recordings,
   on them without the output area, and with ``--eval-stimuli`` of their stimuli. The card's
   ``training_ranges`` say which stimuli, sessions, units per area and output areas the
   training recordings spanned (``predict`` warns outside them).
5. With ``--refit-all`` the shipped estimator is refitted on every network (the table then
   describes a model trained on fewer networks: a conservative estimate; the card says so).

Recordings are featurised in ``--jobs`` processes, one network at a time (a 20,000-network zoo's
recordings do not fit in memory at once); with ``--cache DIR`` every recording's feature rows are
kept there (``rulefinder.classify.cache``), so a rerun or ``benchmarks/scale_curve.py`` reads them.
``--grid-max-networks`` reads the grid on a rule-stratified subset of the held-out networks.

The card's catalogue is ``training_zoo.rules.catalogue()`` at training time (this script may
import training_zoo; predicting never does). Prints one JSON summary.
"""

from __future__ import annotations

import argparse
import multiprocessing
import json
import logging
import os
import shutil
import sys
import time
import zlib
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import xarray as xr
import yaml
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rulefinder.classify.card import (  # noqa: E402
    AccuracyCell,
    ModelCard,
    TrainingRanges,
    ZooInfo,
    catalogue_entries,
    git_commit,
    spec_hash,
)
from rulefinder.classify.cache import concat_rows, load_rows, rows_dir, save_rows  # noqa: E402
from rulefinder.classify.dataset import network_table  # noqa: E402
from rulefinder.classify.features import area_feature_names, area_feature_rows  # noqa: E402
from rulefinder.classify.estimator import RuleIdentifier  # noqa: E402
from rulefinder.classify.registry import write_model  # noqa: E402
from rulefinder.store import ZooStore  # noqa: E402
from rulefinder.virtual import VirtualExperiment  # noqa: E402
from rulefinder.vocabulary import NOISE_LEVELS  # noqa: E402

log = logging.getLogger("train_default")
TARGETS = ("rule", "family", "optimizer")
NO_OUTPUT = {"op": "drop_areas", "areas": ["output"]}


def experiment(units: int | None, sessions: int | None, noise: str) -> list[dict]:
    steps: list[dict] = []
    if units is not None:
        steps.append({"op": "keep_units", "n": int(units), "per_area": True})
    if sessions is not None:
        steps.append({"op": "keep_sessions", "n": int(sessions), "mode": "even"})
    if noise != "none":
        steps.append({"op": "gaussian_noise", "snr": noise})
    return steps


_WORKER: dict = {}


def _init_worker(store_urls: list[str], n_times: int, feature_set: str, cache_dir: str | None) -> None:
    _WORKER.update(
        stores=[ZooStore.open(u, consolidated=False) for u in store_urls], n_times=n_times, feature_set=feature_set,
        names=area_feature_names(n_times, feature_set),
        root=rows_dir(cache_dir, n_times, feature_set) if cache_dir else None,
    )


def _featurise(job: tuple[int, str, list[tuple[str, list[dict], int]]]) -> list[xr.DataArray]:
    """Rows of one network's recordings: ``job`` = (store index, network id, [(cache key,
    virtual-experiment steps, seed), ...]); no steps = the full recording. Cached per key when a
    cache is given."""
    which, nid, wanted = job
    root, names = _WORKER["root"], _WORKER["names"]
    out: list[xr.DataArray | None] = [load_rows(root, key, names) if root else None for key, _, _ in wanted]
    if any(part is None for part in out):
        rec = _WORKER["stores"][which].recording(nid)
        todo = [i for i, part in enumerate(out) if part is None]
        seen = [VirtualExperiment(wanted[i][1], seed=wanted[i][2]).apply(rec) if wanted[i][1] else rec for i in todo]
        rows = area_feature_rows(seen, n_times=_WORKER["n_times"], feature_set=_WORKER["feature_set"])
        rec_of = rows.coords["recording"].values
        for j, i in enumerate(todo):
            part = rows.isel(sample=np.flatnonzero(rec_of == j))
            out[i] = part
            if root is not None:
                save_rows(root, wanted[i][0], part)
    return out


class Featuriser:
    """:func:`_featurise` over jobs in ``n_jobs`` processes, in order; one pool for the whole run
    (spawned, since the store's event-loop thread does not survive a fork; starting one costs
    seconds of imports)."""

    def __init__(self, store_urls: list[str], est: RuleIdentifier, cache_dir: str | None, n_jobs: int):
        self.args = (list(store_urls), est.n_times, est.feature_set, cache_dir)
        self.pool = None
        if n_jobs > 1:
            ctx = multiprocessing.get_context("spawn")
            self.pool = ctx.Pool(n_jobs, initializer=_init_worker, initargs=self.args)
        else:
            _init_worker(*self.args)

    def __call__(self, jobs: list, desc: str) -> list[list]:
        it = self.pool.imap(_featurise, jobs, chunksize=4) if self.pool else map(_featurise, jobs)
        return list(tqdm(it, total=len(jobs), desc=desc, unit="network"))

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
            self.pool.join()


def split_shards(table, holdout: float, seed: int) -> np.ndarray:
    """Boolean mask over networks: True = held out. Per rule, a fraction of its shards."""
    rng = np.random.default_rng(seed)
    shards = table["shard"].values.astype(str)
    rules = table["rule"].values.astype(str)
    held = np.zeros(shards.size, dtype=bool)
    for rule in np.unique(rules):
        own = np.unique(shards[rules == rule])
        k = max(1, int(round(holdout * own.size))) if own.size > 1 else 0
        pick = rng.choice(own, k, replace=False)
        held |= np.isin(shards, pick)
    return held


def load_zoo(url: str, max_networks: int, holdout: float, seed: int):
    """The store, its network table (at most ``max_networks``, seeded) and the held-out mask."""
    # Not through consolidated metadata: for a 15,000-network zoo it is a JSON document of ~75 MB
    # that every process would parse; a network's own metadata files are a few kB.
    store = ZooStore.open(url, consolidated=False)
    table = network_table(store)
    if max_networks and table.sizes["sample"] > max_networks:
        keep = np.random.default_rng(seed).choice(table.sizes["sample"], max_networks, replace=False)
        table = table.isel(sample=np.sort(keep))
    return store, table, split_shards(table, holdout, seed)


def base_shard(shard: str) -> str:
    """A shard's name without its spec-seed suffix (``<cell>.r1.s2`` -> ``<cell>.r1``)."""
    head, _, last = shard.rpartition(".")
    return head if head and last[:1] == "s" and last[1:].isdigit() else shard


def load_zoos(urls: list[str], max_networks: int, holdout: float, seed: int):
    """:func:`load_zoo` over several stores: their tables pooled (variable ``store``: the index
    into ``urls``) and one held-out mask. The first store's split is its own split alone; a
    later store's shard is held out when the first store's shard of the same base name is,
    and drawn at ``holdout`` per rule when that shard is absent."""
    first_store, first, held0 = load_zoo(urls[0], max_networks, holdout, seed)
    stores, tables, helds = [first_store], [first], [held0]
    side = dict(zip(first["shard"].values.astype(str), held0.tolist()))
    for k, url in enumerate(urls[1:], start=1):
        store, table, own = load_zoo(url, max_networks, holdout, seed + k)
        shards = table["shard"].values.astype(str)
        held = np.array([side.get(base_shard(s), o) for s, o in zip(shards, own.tolist(), strict=True)], dtype=bool)
        stores.append(store), tables.append(table), helds.append(held)
    for k, t in enumerate(tables):
        tables[k] = t.assign(store=("sample", np.full(t.sizes["sample"], k)))
    table = xr.concat(tables, dim="sample") if len(tables) > 1 else tables[0]
    table = table.assign_coords(sample=np.arange(table.sizes["sample"]))
    ids = table["network"].values.astype(str)
    uniq, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        raise ValueError(f"stores {urls}: network ids {uniq[counts > 1][:3].tolist()} occur in more than one store; "
                         "expected disjoint zoos (a spec seed suffix such as .s2)")
    return stores, table, np.concatenate(helds)


def pooled_spec(specs: list[dict]) -> dict:
    """The card's zoo spec: the spec itself for one zoo; for several, ``{"name": "a+b", "zoos":
    [...], "recording": ...}`` with the recording settings they share (what ``predict``'s
    training-range warnings read), or none when they differ."""
    if len(specs) == 1:
        return specs[0]
    out = {"name": "+".join(str(s.get("name", "?")) for s in specs), "zoos": specs}
    recording = [s.get("recording") for s in specs]
    if all(r == recording[0] for r in recording):
        out["recording"] = recording[0]
    return out


def stimuli_view(n: int, offset: float | None = None) -> list[dict]:
    """Steps that keep ``n`` stimuli and, given ``offset``, add that baseline (in the recording's SDs)."""
    steps = [{"op": "keep_stimuli", "n": int(n)}]
    if offset is not None:
        steps.append({"op": "scale_offset", "offset": float(offset), "relative": True})
    return steps


def training_ranges(views: list[list[dict]], units: np.ndarray, recording: dict | None) -> TrainingRanges:
    """The card's ranges over the training recordings: ``views`` are their virtual-experiment
    steps (``[]``: a full recording, as the zoo spec's ``recording`` says it was made),
    ``units`` the unit count of every area row they gave."""
    recording = recording or {}
    full = {"stimuli": recording.get("probes"), "sessions": recording.get("checkpoints")}
    seen: dict[str, list[int]] = {"stimuli": [], "sessions": []}
    output = set()
    for steps in views:
        by_op = {s["op"]: s for s in steps}
        output.add(by_op.get("drop_areas", {}).get("areas") != ["output"])
        for what, op in (("stimuli", "keep_stimuli"), ("sessions", "keep_sessions")):
            n = by_op.get(op, {}).get("n", full[what])
            if isinstance(n, int):
                seen[what].append(min(n, full[what]) if isinstance(full[what], int) else n)
            elif full[what] is None:  # a step kept some but the full count is unknown: so is the range
                seen[what] = []
                full[what] = "unknown"

    def span(vals):
        return (int(min(vals)), int(max(vals))) if vals else None

    return TrainingRanges(
        stimuli=span(seen["stimuli"]) if isinstance(full["stimuli"], int) else None,
        sessions=span(seen["sessions"]) if isinstance(full["sessions"], int) else None,
        units_per_area=span(units.tolist()),
        output_area=sorted(output),
    )


def confused_pairs(y_true: np.ndarray, y_pred: np.ndarray, min_rate: float, top: int) -> list[list[str]]:
    classes = np.unique(y_true)
    n = {c: int(np.sum(y_true == c)) for c in classes}
    pairs = []
    for i, a in enumerate(classes):
        for b in classes[i + 1 :]:
            wrong = int(np.sum((y_true == a) & (y_pred == b)) + np.sum((y_true == b) & (y_pred == a)))
            rate = wrong / max(n[a] + n[b], 1)
            if rate >= min_rate:
                pairs.append((rate, [str(a), str(b)]))
    return [p for _, p in sorted(pairs, key=lambda x: -x[0])[:top]]


def balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(np.mean([np.mean(y_pred[y_true == c] == c) for c in np.unique(y_true)]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--store", required=True, action="append",
                    help="A zoo store; give several times to pool zoos (with one --spec each, in order).")
    ap.add_argument("--spec", action="append",
                    help="The zoo spec YAML the store was trained from (its hash goes on the card).")
    ap.add_argument("--out", default=str(REPO / "rulefinder/classify/models/default"))
    ap.add_argument("--name", default="default")
    ap.add_argument("--holdout", type=float, default=0.25)
    ap.add_argument("--draws", type=int, default=2, help="Virtual experiments per training network.")
    ap.add_argument("--drop-output-draws", type=int, default=1,
                    help="More virtual experiments per training network, each without the output area.")
    ap.add_argument("--stimuli-draws", type=int, default=0,
                    help="More virtual experiments per training network, each with a subset of the stimuli "
                    "(every other one also without the output area).")
    ap.add_argument("--stimuli-range", default="16,64",
                    help="LO,HI: the stimulus count of a --stimuli-draws view, drawn uniformly per network and draw.")
    ap.add_argument("--stimuli-offset", default="",
                    help="LO,HI: also add a baseline to each --stimuli-draws view, drawn uniformly, in the recording's SDs.")
    ap.add_argument("--eval-stimuli", default="16,24",
                    help="Held-out rule balanced accuracy also on views with this many stimuli (comma-separated; empty: none).")
    ap.add_argument("--grid-units", default="10,30,64")
    ap.add_argument("--grid-sessions", default="3,5,10,21")
    ap.add_argument("--grid-noise", default=",".join(NOISE_LEVELS))
    ap.add_argument("--params", default="{}", help="RuleIdentifier parameters as JSON.")
    ap.add_argument("--refit-all", action="store_true")
    ap.add_argument("--max-networks", type=int, default=0, help="Use at most this many networks (quick runs).")
    ap.add_argument("--grid-max-networks", type=int, default=0,
                    help="Read the expected-accuracy grid on at most this many held-out networks (stratified by rule; 0: all).")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="Processes that featurise recordings.")
    ap.add_argument("--cache", help="Keep every recording's feature rows here (a rerun, or benchmarks/scale_curve.py, reads them).")
    ap.add_argument("--featurise-only", action="store_true", help="Only fill --cache: featurise every recording the run reads, fit nothing.")
    ap.add_argument("--fit-threads", type=int, default=os.cpu_count() or 1,
                    help="BLAS threads while fitting (featurising runs one thread per process).")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    t_start = time.perf_counter()

    if args.spec and len(args.spec) != len(args.store):
        ap.error(f"--spec given {len(args.spec)} times for {len(args.store)} --store: expected one spec per store")
    _, table, held = load_zoos(args.store, args.max_networks, args.holdout, args.seed)
    ids = table["network"].values.astype(str)
    store_of = table["store"].values.astype(int)
    shards = table["shard"].values.astype(str)
    labels = {t: table[t].values.astype(str) for t in TARGETS}
    learned = table["learned"].values.astype(bool) if "learned" in table else None
    log.info("%d networks (%d shards, %d stores); %d held out", ids.size, np.unique(shards).size, len(args.store), held.sum())

    units = [int(u) for u in args.grid_units.split(",")]
    sessions = [int(s) for s in args.grid_sessions.split(",")]
    noises = args.grid_noise.split(",")
    stim_lo, stim_hi = (int(v) for v in args.stimuli_range.split(","))
    offsets = [float(v) for v in args.stimuli_offset.split(",")] if args.stimuli_offset else None
    eval_stimuli = [int(v) for v in args.eval_stimuli.split(",") if v]
    params = json.loads(args.params)
    est = RuleIdentifier(**params)
    featurise = Featuriser(args.store, est, args.cache, args.jobs)

    # Draws are seeded by the network's id, not its position: a grown store keeps every cached draw.
    net_key = [zlib.crc32(n.encode()) for n in ids]

    def draws_of(i: int) -> list[tuple[str, list[dict], int]]:
        """The full recording plus ``--draws`` virtual experiments, drawn per network (so the
        draw does not depend on the order in which networks are featurised)."""
        out = [(ids[i], [], 0)]
        rng = np.random.default_rng([args.seed, net_key[i]])
        for d in range(args.draws):
            steps = experiment(rng.choice([*units[:-1], None]), rng.choice([*sessions[:-1], None]), str(rng.choice(noises)))
            seed = int((args.seed * 1_000_003 + net_key[i] * 101 + d) % 2**32)
            out.append((f"{ids[i]}@train{d}-s{seed}", steps, seed))
        for d in range(args.drop_output_draws):
            steps = experiment(rng.choice([*units[:-1], None]), rng.choice([*sessions[:-1], None]), str(rng.choice(noises)))
            seed = int((args.seed * 1_000_003 + net_key[i] * 101 + 7_919 + d) % 2**32)
            out.append((f"{ids[i]}@nooutput{d}-s{seed}", [NO_OUTPUT, *steps], seed))
        for d in range(args.stimuli_draws):  # drawn after the others: their draws stay as cached
            view = stimuli_view(rng.integers(stim_lo, stim_hi + 1), offsets and round(float(rng.uniform(*offsets)), 3))
            steps = view + experiment(rng.choice([*units[:-1], None]), rng.choice([*sessions[:-1], None]), str(rng.choice(noises)))
            if d % 2:
                steps = [NO_OUTPUT, *steps]
            seed = int((args.seed * 1_000_003 + net_key[i] * 101 + 15_401 + d) % 2**32)
            digest = zlib.crc32(json.dumps(steps, sort_keys=True).encode())  # the key names the view: ranges change it
            out.append((f"{ids[i]}@stimuli{d}-{digest:08x}-s{seed}", steps, seed))
        return out

    def training_set(mask: np.ndarray):
        idx = np.flatnonzero(mask)
        jobs = [(store_of[i], ids[i], draws_of(i)) for i in idx]
        parts = featurise(jobs, "training recordings")
        rows = np.repeat(idx, [len(p) for p in parts])
        views = [steps for _, _, wanted in jobs for _, steps, _ in wanted]
        return concat_rows([r for p in parts for r in p]), {t: labels[t][rows] for t in TARGETS}, shards[rows], views

    # Held-out evaluation: full recordings, then the grid (on a rule-stratified subset when capped).
    held_idx = np.flatnonzero(held)
    grid_idx = held_idx
    if args.grid_max_networks and held_idx.size > args.grid_max_networks:
        rng = np.random.default_rng(args.seed + 2)
        rules_held = labels["rule"][held_idx]
        per_rule = max(1, args.grid_max_networks // np.unique(rules_held).size)
        grid_idx = np.sort(np.concatenate([
            rng.permutation(held_idx[rules_held == r])[:per_rule] for r in np.unique(rules_held)
        ]))
    cell_steps = [
        (noise, u, s, experiment(None if u == units[-1] else u, None if s == sessions[-1] else s, noise))
        for noise in noises for u in units for s in sessions
    ]
    grid_pos = set(grid_idx.tolist())

    def held_jobs(i: int) -> tuple[int, str, list]:
        wanted = [(ids[i], [], 0)]
        if int(i) in grid_pos:
            seeds = [int((7919 * net_key[i] + 31 * u + s) % 2**32) for _, u, s, _ in cell_steps]
            wanted += [(f"{ids[i]}@cell-{noise}-u{u}-s{s}-{seed}", steps, seed)
                       for (noise, u, s, steps), seed in zip(cell_steps, seeds, strict=True)]
        wanted += [(f"{ids[i]}@stimuli{n}-s{net_key[i] % 2**31}", stimuli_view(n), net_key[i] % 2**31) for n in eval_stimuli]
        return store_of[i], ids[i], [*wanted, (f"{ids[i]}@nooutput", [NO_OUTPUT], 0)]  # last: the recording without its output

    if args.featurise_only:  # fill --cache (e.g. while the estimator is still being changed), fit nothing
        idx = np.flatnonzero(~held)
        jobs = [(store_of[i], ids[i], draws_of(i)) for i in idx] + [held_jobs(i) for i in held_idx]
        for start in range(0, len(jobs), 2000):  # in slices: the rows are not kept
            featurise(jobs[start:start + 2000], f"recordings {start}+")
        featurise.close()
        print(json.dumps({"cache": args.cache, "networks": len(jobs), "total_s": round(time.perf_counter() - t_start, 1)}))
        return 0

    t0 = time.perf_counter()
    rows, y, groups, views = training_set(~held)
    n_samples = int(rows.coords["recording"].values.max()) + 1
    specs = [yaml.safe_load(Path(p).read_text()) for p in args.spec] if args.spec else []
    spec = pooled_spec(specs) if specs else None
    recorded = spec.get("recording") if isinstance(spec, dict) and isinstance(spec.get("recording"), dict) else None
    ranges = training_ranges(views, rows.coords["units"].values, recorded)
    with threadpool_limits(args.fit_threads):  # the featurising processes are idle by now
        est.fit_features(rows, y, groups)
    del rows
    fit_s = time.perf_counter() - t0
    log.info("featurised and fitted on %d recordings in %.0f s", n_samples, fit_s)

    t0 = time.perf_counter()
    held_parts = featurise([held_jobs(i) for i in held_idx], "held-out recordings")
    details = est.predict_details_features(concat_rows([p[0] for p in held_parts]))
    truth = {t: labels[t][held_idx] for t in TARGETS}
    pred = {
        t: np.array([max(d[f"{t}_probabilities"], key=d[f"{t}_probabilities"].get) for d in details]) for t in TARGETS
    }
    verdicts = np.array([d["verdict"] for d in details])
    identified = verdicts == "identified"
    metrics = {
        "split": f"held-out shards: {args.holdout:.0%} of each rule's shards (seed {args.seed}), full recordings",
        "n_train_networks": int((~held).sum()),
        "n_heldout_networks": int(held.sum()),
        **({"n_train_learned": int(learned[~held].sum())} if learned is not None else {}),
        "rule_accuracy": float(np.mean(pred["rule"] == truth["rule"])),
        "rule_balanced_accuracy": balanced_accuracy(truth["rule"], pred["rule"]),
        "family_accuracy": float(np.mean(pred["family"] == truth["family"])),
        "optimizer_accuracy": float(np.mean(pred["optimizer"] == truth["optimizer"])),
        "chance_rule_accuracy": 1.0 / len(np.unique(labels["rule"])),
        "identified_fraction": float(identified.mean()),
        "identified_precision": float(np.mean(pred["rule"][identified] == truth["rule"][identified])) if identified.any() else None,
        "unknown_fraction": float(np.mean(verdicts == "unknown")),
        "per_rule_accuracy": {
            str(c): float(np.mean(pred["rule"][truth["rule"] == c] == c)) for c in np.unique(truth["rule"])
        },
    }
    p_no_out = est.predict_proba_features(concat_rows([p[-1] for p in held_parts]))["rule"]  # as the grid cells below
    pred_no_out = est.classes_["rule"][p_no_out.argmax(axis=1)]
    metrics["rule_accuracy_no_output"] = float(np.mean(pred_no_out == truth["rule"]))
    metrics["rule_balanced_accuracy_no_output"] = balanced_accuracy(truth["rule"], pred_no_out)
    for j, n in enumerate(eval_stimuli):  # the views just before the output-less one
        proba = est.predict_proba_features(concat_rows([part[-1 - len(eval_stimuli) + j] for part in held_parts]))["rule"]
        metrics[f"rule_balanced_accuracy_stimuli{n}"] = balanced_accuracy(truth["rule"], est.classes_["rule"][proba.argmax(axis=1)])
    learned_held = learned[held_idx] if learned is not None else np.zeros(held_idx.size, dtype=bool)
    if learned_held.any():
        metrics["rule_balanced_accuracy_learned"] = balanced_accuracy(truth["rule"][learned_held], pred["rule"][learned_held])
        metrics["n_heldout_learned"] = int(learned_held.sum())
    if len(args.store) > 1:  # each zoo's held-out networks apart (is the pooled model better on both?)
        metrics["per_store"] = {}
        for k, url in enumerate(args.store):
            own = store_of[held_idx] == k
            if not own.any():
                continue
            part = {"n_heldout_networks": int(own.sum()),
                    "rule_balanced_accuracy": balanced_accuracy(truth["rule"][own], pred["rule"][own]),
                    "rule_balanced_accuracy_no_output": balanced_accuracy(truth["rule"][own], pred_no_out[own])}
            if (own & learned_held).any():
                part["rule_balanced_accuracy_learned"] = balanced_accuracy(
                    truth["rule"][own & learned_held], pred["rule"][own & learned_held])
            metrics["per_store"][url] = part
    in_grid = [k for k, i in enumerate(held_idx) if int(i) in grid_pos]
    grid_truth = labels["rule"][held_idx[in_grid]]
    cells = []
    for c, (noise, u, s, _) in enumerate(cell_steps):
        p = est.predict_proba_features(concat_rows([held_parts[k][1 + c] for k in in_grid]))["rule"]
        top = est.classes_["rule"][p.argmax(axis=1)]
        cells.append(
            AccuracyCell(
                units=u,
                sessions=s,
                noise=noise,
                accuracy=round(float(np.mean(top == grid_truth)), 4),
                n=len(in_grid),
                confusable=confused_pairs(grid_truth, top, min_rate=0.15, top=5),
            )
        )
        log.info("cell %s units=%d sessions=%d: %.3f", noise, u, s, cells[-1].accuracy)
    eval_s = time.perf_counter() - t0

    if args.refit_all:
        t0 = time.perf_counter()
        rows, y, groups, views = training_set(np.ones(ids.size, dtype=bool))
        n_samples = int(rows.coords["recording"].values.max()) + 1
        ranges = training_ranges(views, rows.coords["units"].values, recorded)
        with threadpool_limits(args.fit_threads):
            est = RuleIdentifier(**params).fit_features(rows, y, groups)
        del rows
        log.info("refitted on all %d recordings in %.0f s", n_samples, time.perf_counter() - t0)
    featurise.close()

    from training_zoo.rules import catalogue

    known = set(est.classes_["rule"].tolist())
    rules, counts = np.unique(labels["rule"], return_counts=True)
    card = ModelCard(
        name=args.name,
        commit=git_commit(REPO),
        estimator="rulefinder.classify.estimator.RuleIdentifier",
        description=f"RuleIdentifier({json.dumps(params)}) trained on the {spec.get('name') if spec else 'given'} zoo "
        f"({ids.size} networks, full recordings plus {args.draws} virtual experiments each, "
        f"{args.drop_output_draws} without the output area and {args.stimuli_draws} with {args.stimuli_range} stimuli"
        f"{f' and a baseline of {args.stimuli_offset} SDs' if offsets else ''}).",
        catalogue=catalogue_entries([e for e in catalogue() if e["id"] in known]),
        labels={t: [str(c) for c in est.classes_[t]] for t in TARGETS},
        zoo=ZooInfo(
            spec=spec,
            spec_hash=spec_hash(spec) if spec is not None else None,
            store=", ".join(args.store),
            n_networks=int(ids.size),
            n_shards=int(np.unique(shards).size),
            rules={str(r): int(c) for r, c in zip(rules, counts, strict=True)},
        ),
        n_networks=int(ids.size if args.refit_all else (~held).sum()),
        n_samples=n_samples,
        metrics=metrics,
        expected_accuracy=cells,
        training_ranges=ranges,
        thresholds={
            "identified": float(est.identified_threshold_),
            "unknown": float(est.unknown_threshold_),
            "confusable_ratio": float(est.confusable_ratio),
        },
        notes=[
            "expected_accuracy: rule accuracy on held-out shards, one virtual experiment per network and cell "
            "(keep_units per area, keep_sessions even, gaussian_noise); units=%d means every recorded unit "
            "(the zoo records %d per layer) and sessions=%d every checkpoint." % (units[-1], units[-1], sessions[-1]),
        ]
        + (["The shipped estimator is refitted on every network; metrics and the table come from the fit without the held-out shards (conservative)."] if args.refit_all else []),
    )
    out = Path(args.out)
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    card = write_model(tmp, est, card)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    size = sum(p.stat().st_size for p in out.iterdir())
    summary = {
        "out": str(out),
        "networks": int(ids.size),
        "fit_s": round(fit_s, 1),
        "eval_s": round(eval_s, 1),
        "total_s": round(time.perf_counter() - t_start, 1),
        "model_bytes": size,
        "metrics": {k: v for k, v in metrics.items() if k != "per_rule_accuracy"},
    }
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
