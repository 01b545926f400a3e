"""Out-of-zoo recordings: the shipped model on networks trained by code outside the zoo.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/out_of_zoo.py [--per-rule 12] \
        [--diagnose] [--zoo-rows /work/runs/zoo10k-rows] [--zoo-store /work/runs/zoo10k.zarr] \
        [--out result.json]

The mission is recordings from other people's code, so this is the split that matters most: a
few rules whose math is simple and whose learning is reliable, each written here from its paper
in plain numpy (no ``training_zoo`` code), trained on small tasks and recorded the way a lab
would (``make_recording``, ../shared/RECORDING_FORMAT.md): hidden layers as areas (the output
units recorded as one more area in some networks, as a lab might or might not), a fixed probe
set as stimuli, checkpoints as sessions, held-out accuracy as ``performance`` (in some).

Rules (catalogue id): ``backprop`` (SGD or Adam), ``feedback_alignment`` (Lillicrap et al.
2016: fixed random feedback matrices instead of W^T), ``direct_feedback_alignment`` (Nokland
2016: the output error sent to every hidden layer through a fixed random matrix),
``sign_symmetry`` (Liao et al. 2016: feedback through sign(W)^T, here scaled by the layer's
mean |W| so the error keeps backprop's size) and ``node_perturbation`` (Williams 1992 style:
noise on every hidden pre-activation, the loss change times the noise as the error signal).
Circumstances drawn per network (seeded): task (random linear teacher, 4 classes; sklearn's
8x8 digits, 10 classes), hidden layers 1-3 of width 16-64, activation tanh / relu / sigmoid,
learning rate within a window, 16 / 24 / 64 probes, 8 / 12 / 21 sessions, geometric or even
checkpoint spacing, output area recorded or not, performance given or not.

Prints one JSON object: ``benchmark`` (accuracy on rule, family and optimizer over all networks
and over the networks that learned; balanced rule accuracy; top-3; the confusion true rule ->
named rule; mean probability of the true rule per rule; verdict counts, and how many
``identified`` were wrong; the same accuracies split by each recorded circumstance) and with
``--diagnose`` the nuisance sweep (one circumstance changed at a time on the same networks: how
p(true rule) and the top rule move) and, with ``--zoo-rows``, the comparison of a recording's
design row with the zoo's backprop and EqProp rows (which features push the model to EqProp),
and with ``--zoo-store`` the model's held-out zoo networks predicted with and without their
output area, and its held-out accuracy on backprop and EqProp per implementation variant.
Also ``benchmark_zoo_like_recording``: the same networks recorded as the zoo records them (64
probes, 21 even sessions, output area, performance), so the rest of the gap is implementation.

This is a test split: nothing in the model or the benchmark was tuned on it. Learning rates are
fixed windows chosen so the networks learn their task (task accuracy only, never the model's
answer).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rulefinder.classify.predict import predict_recordings, resolve_model  # noqa: E402
from rulefinder.recording import make_recording  # noqa: E402

RULES = ("backprop", "feedback_alignment", "direct_feedback_alignment", "sign_symmetry", "node_perturbation")
ACTIVATIONS = ("tanh", "relu", "sigmoid")
TASKS = ("teacher", "digits")
#: Learning-rate windows (log-uniform) per optimizer, and a factor per rule: chosen so the
#: networks learn their task; never looked at the model's answers.
LR = {"sgd": (0.05, 0.5), "adam": (0.001, 0.01)}
RULE_LR = {"node_perturbation": 0.3}
RULE_STEPS = {"node_perturbation": 4}  # noisy estimates: more steps, as the zoo gives it
BATCH = 32


# --- tasks ---------------------------------------------------------------------------------

def make_task(name: str, rng: np.random.Generator):
    """(x_train, y_train, x_test, y_test, n_classes); inputs roughly unit scale."""
    if name == "teacher":
        n_in, n_cls = 20, 4
        teacher = rng.normal(size=(n_in, n_cls))
        x = rng.normal(size=(3000, n_in))
        y = np.argmax(x @ teacher, axis=1)
        return x[:2500], y[:2500], x[2500:], y[2500:], n_cls
    if name == "digits":
        from sklearn.datasets import load_digits

        d = load_digits()
        x = d.data / 16.0
        x = (x - x.mean(0)) / (x.std(0) + 0.1)
        order = rng.permutation(len(x))
        x, y = x[order], d.target[order]
        return x[:1400], y[:1400], x[1400:], y[1400:], 10
    raise ValueError(f"task {name!r}: expected one of {TASKS}")


# --- a minimal multilayer perceptron and its rules ------------------------------------------

def _act(name: str, a: np.ndarray) -> np.ndarray:
    if name == "tanh":
        return np.tanh(a)
    if name == "relu":
        return np.maximum(a, 0.0)
    return 1.0 / (1.0 + np.exp(-a))


def _dact(name: str, a: np.ndarray, h: np.ndarray) -> np.ndarray:
    if name == "tanh":
        return 1.0 - h**2
    if name == "relu":
        return (a > 0).astype(a.dtype)
    return h * (1.0 - h)


def _softmax_xent(z: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-example loss and the softmax's error p - onehot."""
    z = z - z.max(1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(1, keepdims=True)
    loss = -np.log(p[np.arange(len(y)), y] + 1e-12)
    p[np.arange(len(y)), y] -= 1.0
    return loss, p


class MLP:
    def __init__(self, sizes: list[int], activation: str, rng: np.random.Generator):
        self.sizes, self.activation = sizes, activation
        self.W = [rng.normal(size=(a, b)) / np.sqrt(a) for a, b in zip(sizes[:-1], sizes[1:])]
        self.b = [np.zeros(b) for b in sizes[1:]]

    def forward(self, x: np.ndarray, noise: list[np.ndarray] | None = None):
        """Pre-activations and activities of every layer (the last is linear: the logits)."""
        pre, post = [], [x]
        for i, (w, b) in enumerate(zip(self.W, self.b)):
            a = post[-1] @ w + b
            if noise is not None and i < len(noise):
                a = a + noise[i]
            pre.append(a)
            post.append(a if i == len(self.W) - 1 else _act(self.activation, a))
        return pre, post


class Rule:
    """Error signals (``delta`` per layer, pre-activation side) from one batch."""

    def __init__(self, rule: str, net: MLP, rng: np.random.Generator, sigma: float = 0.1):
        self.rule, self.sigma, self.rng = rule, sigma, rng
        n_out = net.sizes[-1]
        # Fixed random feedback, drawn once (FA: per layer, shaped like W^T; DFA: output -> layer).
        self.B = [rng.normal(size=w.shape) / np.sqrt(w.shape[1]) for w in net.W]
        self.D = [rng.normal(size=(n_out, n)) / np.sqrt(n_out) for n in net.sizes[1:-1]]

    def deltas(self, net: MLP, x: np.ndarray, y: np.ndarray):
        pre, post = net.forward(x)
        loss, e = _softmax_xent(post[-1], y)
        e /= len(y)
        n_hidden = len(net.W) - 1
        deltas = [None] * len(net.W)
        deltas[-1] = e
        if self.rule == "node_perturbation":
            # Every layer's units perturbed, the output's too: no layer sees the exact gradient.
            xi = [self.sigma * self.rng.normal(size=a.shape) for a in pre]
            _, post_n = net.forward(x, noise=xi)
            loss_n, _ = _softmax_xent(post_n[-1], y)
            gain = (loss_n - loss)[:, None] / (self.sigma**2 * len(y))
            return [gain * z for z in xi], post
        for i in range(n_hidden - 1, -1, -1):
            if self.rule == "direct_feedback_alignment":
                back = e @ self.D[i]
            else:
                w = net.W[i + 1]
                if self.rule == "backprop":
                    fb = w.T
                elif self.rule == "feedback_alignment":
                    fb = self.B[i + 1].T
                elif self.rule == "sign_symmetry":
                    fb = np.sign(w).T * np.abs(w).mean()
                else:
                    raise ValueError(f"rule {self.rule!r}: expected one of {RULES}")
                back = deltas[i + 1] @ fb
            deltas[i] = back * _dact(net.activation, pre[i], post[i + 1])
        return deltas, post


class Optimizer:
    def __init__(self, name: str, lr: float, params: list[np.ndarray]):
        self.name, self.lr, self.t = name, lr, 0
        self.m = [np.zeros_like(p) for p in params]
        self.v = [np.zeros_like(p) for p in params]

    def step(self, params: list[np.ndarray], grads: list[np.ndarray]) -> None:
        self.t += 1
        for i, (p, g) in enumerate(zip(params, grads)):
            if self.name == "sgd":
                p -= self.lr * g
                continue
            self.m[i] = 0.9 * self.m[i] + 0.1 * g
            self.v[i] = 0.999 * self.v[i] + 0.001 * g * g
            m_hat = self.m[i] / (1 - 0.9**self.t)
            v_hat = self.v[i] / (1 - 0.999**self.t)
            p -= self.lr * m_hat / (np.sqrt(v_hat) + 1e-8)


# --- one network, recorded -------------------------------------------------------------------

@dataclass(frozen=True)
class Config:
    rule: str
    optimizer: str
    task: str
    widths: tuple[int, ...]
    activation: str
    lr: float
    steps: int
    probes: int
    sessions: int
    spacing: str  # geometric | even
    output_area: bool
    performance: bool
    seed: int


def checkpoint_steps(steps: int, sessions: int, spacing: str) -> np.ndarray:
    """``sessions`` strictly increasing steps from 0 to ``steps``."""
    if spacing == "even":
        out = np.linspace(0, steps, sessions).round().astype(int)
    else:
        out = np.concatenate([[0], np.geomspace(1, steps, sessions - 1).round().astype(int)])
    for i in range(1, len(out)):  # geometric rounding repeats small steps: push them apart
        out[i] = max(out[i], out[i - 1] + 1)
    return out


@dataclass
class Trained:
    """Every checkpoint of one network: activity of every layer on ``probes`` stimuli."""

    config: Config
    steps: np.ndarray
    layers: list[np.ndarray]  # per checkpoint: (max probes, all units) incl. the logits
    areas: np.ndarray  # area of each unit (``hidden1`` ... , ``output``)
    accuracy: np.ndarray  # held-out accuracy per checkpoint
    chance: float


def train(cfg: Config) -> Trained:
    """Train one network by ``cfg.rule`` and keep the probes' activity at its checkpoints.
    Recording consumes no random numbers: configs that differ only in how they are recorded
    (probes, sessions, spacing, output area, performance) train the same network."""
    rng = np.random.default_rng(cfg.seed)
    x_tr, y_tr, x_te, y_te, n_cls = make_task(cfg.task, rng)
    net = MLP([x_tr.shape[1], *cfg.widths, n_cls], cfg.activation, rng)
    rule = Rule(cfg.rule, net, rng)
    params = [*net.W, *net.b]
    opt = Optimizer(cfg.optimizer, cfg.lr, params)
    probes = x_te[:64]
    evaluate = x_te[64:]
    at = checkpoint_steps(cfg.steps, cfg.sessions, cfg.spacing)
    layers, accuracy = [], []
    step = 0
    for target in at:
        while step < target:
            idx = rng.integers(0, len(x_tr), BATCH)
            deltas, post = rule.deltas(net, x_tr[idx], y_tr[idx])
            grads_w = [h.T @ d for h, d in zip(post[:-1], deltas)]
            grads_b = [d.sum(0) for d in deltas]
            opt.step(params, grads_w + grads_b)
            step += 1
        _, post = net.forward(probes)
        layers.append(np.concatenate(post[1:], axis=1))
        _, post = net.forward(evaluate)
        accuracy.append(float(np.mean(post[-1].argmax(1) == y_te[64:])))
    areas = np.concatenate([[f"hidden{i + 1}"] * w for i, w in enumerate(cfg.widths)] + [["output"] * n_cls])
    return Trained(cfg, at, layers, areas, np.array(accuracy), 1.0 / n_cls)


def record(t: Trained, probes: int | None = None, output_area: bool | None = None,
           performance: bool | None = None, units: int | None = None,
           scale: float = 1.0, offset: float = 0.0, seed: int = 0):
    """The lab's recording of a trained network (defaults from its config): its ``probes``
    first probe stimuli at every checkpoint, the hidden areas (plus ``output``), at most
    ``units`` units per area (a seeded subset), times ``scale`` plus ``offset``."""
    cfg = t.config
    probes = cfg.probes if probes is None else probes
    output_area = cfg.output_area if output_area is None else output_area
    performance = cfg.performance if performance is None else performance
    keep = np.ones(t.areas.size, dtype=bool) if output_area else t.areas != "output"
    if units is not None:
        rng = np.random.default_rng(seed)
        for a in np.unique(t.areas):
            own = np.flatnonzero(keep & (t.areas == a))
            if own.size > units:
                keep[rng.choice(own, own.size - units, replace=False)] = False
    resp = np.stack([layer[:probes][:, keep] for layer in t.layers]) * scale + offset
    areas = t.areas[keep]
    order = [a for a in dict.fromkeys(t.areas) if a in set(areas)]
    return make_recording(
        resp,
        session_time=t.steps.astype(float),
        unit_area=areas,
        performance=t.accuracy if performance else None,
        area_order=order,
        source=f"out-of-zoo {cfg.rule}/{cfg.optimizer} seed {cfg.seed}",
    )


def learned(t: Trained) -> bool:
    """Learned its task: final held-out accuracy above chance by half the distance to 1 or by
    0.25, whichever is less (so 10-class digits need 0.35, the 4-class teacher 0.5)."""
    return bool(t.accuracy[-1] >= t.chance + min(0.5 * (1 - t.chance), 0.25))


# --- the benchmark ---------------------------------------------------------------------------

def draw_configs(per_rule: int, seed: int = 0) -> list[Config]:
    """``per_rule`` networks for each rule (backprop: half SGD, half Adam; the others SGD,
    one in four Adam), circumstances drawn at random."""
    rng = np.random.default_rng(seed)
    out = []
    for rule in RULES:
        for i in range(per_rule):
            if rule == "backprop":
                optimizer = "sgd" if i % 2 == 0 else "adam"
            else:
                optimizer = "adam" if i % 4 == 3 and rule != "node_perturbation" else "sgd"
            lo, hi = LR[optimizer]
            depth = int(rng.integers(1, 4))
            out.append(Config(
                rule=rule,
                optimizer=optimizer,
                task=str(rng.choice(TASKS)),
                widths=tuple(int(w) for w in rng.choice([16, 24, 32, 48, 64], size=depth)),
                activation=str(rng.choice(ACTIVATIONS)),
                lr=float(np.exp(rng.uniform(np.log(lo), np.log(hi))) * RULE_LR.get(rule, 1.0)),
                steps=int(rng.choice([300, 500, 800])) * RULE_STEPS.get(rule, 1),
                probes=int(rng.choice([16, 24, 64])),
                sessions=int(rng.choice([8, 12, 21])),
                spacing=str(rng.choice(["geometric", "even"])),
                output_area=bool(rng.integers(2)),
                performance=bool(rng.integers(2)),
                seed=int(rng.integers(2**31)),
            ))
    return out


def summarise(truth: list[dict], results: list, card) -> dict:
    """Accuracies, confusion, mean p(true rule), verdict counts for predictions ``results``
    of recordings whose true labels are ``truth`` (dicts with rule, family, optimizer)."""
    n = len(truth)
    rule_true = np.array([t["rule"] for t in truth])
    rule_pred = np.array([r.top_rule for r in results])
    ok_rule = rule_true == rule_pred
    ok_family = np.array([t["family"] == r.top_family for t, r in zip(truth, results)])
    ok_opt = np.array([t["optimizer"] == r.top_optimizer for t, r in zip(truth, results)])
    p_true = np.array([r.rule_probabilities[t["rule"]] for t, r in zip(truth, results)])
    top3 = np.array([t["rule"] in sorted(r.rule_probabilities, key=r.rule_probabilities.get)[-3:]
                     for t, r in zip(truth, results)])
    confusion = {rule: dict(Counter(rule_pred[rule_true == rule].tolist()).most_common())
                 for rule in dict.fromkeys(rule_true.tolist())}
    verdicts = Counter(r.verdict for r in results)
    wrong_identified = sum(1 for t, r in zip(truth, results) if r.verdict == "identified" and r.top_rule != t["rule"])
    return {
        "n": n,
        "rule_accuracy": float(ok_rule.mean()),
        "rule_balanced_accuracy": float(np.mean([ok_rule[rule_true == c].mean() for c in np.unique(rule_true)])),
        "rule_top3_accuracy": float(top3.mean()),
        "family_accuracy": float(ok_family.mean()),
        "optimizer_accuracy": float(ok_opt.mean()),
        "chance_rule": 1.0 / len(card.labels["rule"]),
        "mean_p_true_rule": float(p_true.mean()),
        "mean_p_true_rule_by_rule": {c: float(p_true[rule_true == c].mean()) for c in dict.fromkeys(rule_true.tolist())},
        "rule_accuracy_by_rule": {c: float(ok_rule[rule_true == c].mean()) for c in dict.fromkeys(rule_true.tolist())},
        "confusion": confusion,
        "named_overall": dict(Counter(rule_pred.tolist()).most_common()),
        "verdicts": dict(verdicts),
        "identified_wrong": wrong_identified,
        "identified": [f"{t['rule']} -> {r.top_rule} ({r.rule_probabilities[r.top_rule]:.2f})"
                       for t, r in zip(truth, results) if r.verdict == "identified"],
        "mean_unknown_score": float(np.mean([r.unknown_score for r in results])),
    }


def family_of(card) -> dict[str, str]:
    return {r.id: r.family for r in card.catalogue}


def run_benchmark(configs: list[Config], model=None) -> dict:
    loaded = resolve_model(model)
    fam = family_of(loaded.card)
    t0 = time.process_time()
    nets = [train(c) for c in configs]
    t_train = time.process_time() - t0
    recs = [record(t) for t in nets]
    t0 = time.process_time()
    results = predict_recordings(recs, model=loaded)
    t_predict = time.process_time() - t0
    truth = [{"rule": c.rule, "family": fam[c.rule], "optimizer": c.optimizer} for c in configs]
    is_learned = np.array([learned(t) for t in nets])
    out = {
        "model": loaded.ref.name,
        "all": summarise(truth, results, loaded.card),
        "learned": summarise([t for t, k in zip(truth, is_learned) if k], [r for r, k in zip(results, is_learned) if k],
                             loaded.card) if is_learned.any() else None,
        "learned_fraction_by_rule": {r: float(is_learned[[c.rule == r for c in configs]].mean()) for r in RULES},
        "final_accuracy_by_rule": {r: float(np.mean([t.accuracy[-1] for t in nets if t.config.rule == r])) for r in RULES},
        "cpu_s": {"train": round(t_train, 1), "predict": round(t_predict, 1)},
    }
    by = {}
    for field in ("output_area", "performance", "task", "activation", "probes", "sessions", "spacing", "optimizer"):
        values = [getattr(c, field) for c in configs]
        by[field] = {}
        for v in dict.fromkeys(values):
            m = [x == v for x in values]
            sel = [i for i, k in enumerate(m) if k]
            by[field][str(v)] = {
                "n": len(sel),
                "rule_accuracy": float(np.mean([results[i].top_rule == configs[i].rule for i in sel])),
                "mean_p_true_rule": float(np.mean([results[i].rule_probabilities[configs[i].rule] for i in sel])),
                "named": dict(Counter(results[i].top_rule for i in sel).most_common(3)),
            }
    out["by_circumstance"] = by
    return out


# --- diagnosis: one circumstance at a time ----------------------------------------------------

#: The bundled example's circumstances (examples/make_examples.py): backprop, plain SGD at lr
#: 0.5, tanh layers of 24 and 16 units, random teacher, 24 probes, 11 geometric sessions over
#: 400 steps, hidden layers only, probe accuracy as performance.
EXAMPLE_LIKE = Config(rule="backprop", optimizer="sgd", task="teacher", widths=(24, 16), activation="tanh",
                      lr=0.5, steps=400, probes=24, sessions=11, spacing="geometric", output_area=False,
                      performance=True, seed=0)

#: name -> (Config changes, record() arguments): each changes one thing of the base.
NUISANCES: dict[str, tuple[dict, dict]] = {
    "base (example-like)": ({}, {}),
    "probes 16": ({"probes": 16}, {}),
    "probes 64": ({"probes": 64}, {}),
    "sessions 5": ({"sessions": 5}, {}),
    "sessions 21": ({"sessions": 21}, {}),
    "spacing even": ({"spacing": "even"}, {}),
    "units 10 per area": ({}, {"units": 10}),
    "widths 64, 64": ({"widths": (64, 64)}, {}),
    "output area recorded": ({"output_area": True}, {}),
    "no performance": ({"performance": False}, {}),
    "scale x10": ({}, {"scale": 10.0}),
    "offset +5": ({}, {"offset": 5.0}),
    "activation relu": ({"activation": "relu", "lr": 0.1}, {}),
    "activation sigmoid": ({"activation": "sigmoid"}, {}),
    "task digits": ({"task": "digits", "lr": 0.1}, {}),
    "optimizer adam": ({"optimizer": "adam", "lr": 0.003}, {}),
    "4x longer training": ({"steps": 1600}, {}),
    "probes 64 + output area": ({"probes": 64, "output_area": True}, {}),
    "zoo-like recording (64 probes, 21 even sessions, output area)": (
        {"probes": 64, "sessions": 21, "spacing": "even", "output_area": True}, {}),
}


def nuisance_sweep(base: Config, seeds: int, model=None) -> dict:
    """Every :data:`NUISANCES` entry on ``seeds`` networks of ``base`` (the same networks where
    only the recording changes: training consumes the same random numbers whatever the
    checkpoints): mean p(true rule), p(equilibrium_propagation), how often the true rule is
    named, the rules named."""
    loaded = resolve_model(model)
    out = {}
    for name, (changes, rec_args) in NUISANCES.items():
        recs = []
        for s in range(seeds):
            cfg = replace(base, seed=s, **changes)
            recs.append(record(train(cfg), seed=s, **rec_args))
        res = predict_recordings(recs, model=loaded)
        p_true = [r.rule_probabilities[base.rule] for r in res]
        out[name] = {
            "p_true_rule": round(float(np.mean(p_true)), 3),
            "p_equilibrium_propagation": round(float(np.mean([r.rule_probabilities["equilibrium_propagation"] for r in res])), 3),
            "true_rule_named": round(float(np.mean([r.top_rule == base.rule for r in res])), 3),
            "named": dict(Counter(r.top_rule for r in res).most_common(3)),
            "warnings": sorted({w.split(":")[0] for r in res for w in r.warnings}),
        }
    return out


def _design_rows(est, rows) -> np.ndarray:
    from rulefinder.classify.estimator import _Rows, _clean

    r = _Rows.of(rows)
    return est._design(_clean(r.values), r.rec, r.depth, r.n_rec)[0]


def zoo_design_rows(est, rows_root: Path, rules: tuple[str, ...], limit: int = 0) -> dict[str, np.ndarray]:
    """Design rows (areas combined by depth) of the zoo's full recordings of ``rules`` from the
    feature-row cache (read only)."""
    from rulefinder.classify.cache import concat_rows, feature_key, load_rows
    from rulefinder.classify.features import area_feature_names

    names = area_feature_names(est.n_times, est.feature_set)
    folder = Path(rows_root) / feature_key(est.n_times, est.feature_set)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no feature rows for the model's feature set {est.feature_set!r}")
    out = {}
    for rule in rules:
        # Full recordings only: keys of virtual experiments carry a suffix after the network id
        # (``_train0-s<seed>``, ``_cell-<noise>-u<units>-s<sessions>-<seed>``).
        files = sorted(f for f in folder.glob(f"{rule}.*.npz") if re.search(r"\.r\d+_\d+$", f.stem))
        if limit:
            files = files[:: max(1, len(files) // limit)]
        out[rule] = _design_rows(est, concat_rows([load_rows(folder, f.stem, names) for f in files]))
    return out


def zoo_comparison(recordings: dict, rows_root: Path, model=None, top: int = 12) -> dict:
    """Why a recording reads as EqProp rather than backprop: the rule classifier's logit gap
    ``logit(equilibrium_propagation) - logit(backprop)`` split into per-feature contributions
    (standardised feature x coefficient difference), for each recording in ``recordings``
    (name -> recording) against the means of the zoo's backprop and EqProp rows; per block of
    the design row (output-side area, deepest hidden area, mean of the other areas) and feature
    kind; and the features that move the gap most against zoo backprop, with the recording's
    value in zoo-backprop standard deviations."""
    from rulefinder.classify.features import area_feature_names

    loaded = resolve_model(model)
    est = loaded.estimator
    pipe = est.estimators_["rule"]
    scaler, clf = pipe.steps[0][1], pipe.steps[1][1]
    classes = list(clf.classes_)
    w = clf.coef_[classes.index("equilibrium_propagation")] - clf.coef_[classes.index("backprop")]
    b = clf.intercept_[classes.index("equilibrium_propagation")] - clf.intercept_[classes.index("backprop")]
    base = area_feature_names(est.n_times, est.feature_set)
    blocks = ("output-side", "deepest hidden", "mean hidden")
    names = [f"{blk}: {n}" for blk in blocks for n in base]

    def kind(n: str) -> str:
        f = n.split(": ", 1)[1]
        if f.startswith(("P_", "dP_")):
            return "progress"
        if f.startswith("U_"):
            return "spread"
        if f.startswith("d_"):
            return "change"
        if "@t" in f:
            return "stats"
        return "structure/depth"

    zoo = zoo_design_rows(est, rows_root, ("backprop", "equilibrium_propagation"))
    z_zoo = {r: (x - scaler.mean_) / scaler.scale_ for r, x in zoo.items()}
    mu_bp, sd_bp = z_zoo["backprop"].mean(0), z_zoo["backprop"].std(0) + 1e-9
    c_bp, c_eq = (z_zoo["backprop"] * w).mean(0), (z_zoo["equilibrium_propagation"] * w).mean(0)
    groups = sorted({(n.split(": ")[0], kind(n)) for n in names})

    def by_group(c: np.ndarray) -> dict:
        return {f"{g[0]} / {g[1]}": round(float(sum(c[i] for i, n in enumerate(names) if (n.split(': ')[0], kind(n)) == g)), 2)
                for g in groups}

    out = {
        "n_zoo_rows": {r: int(x.shape[0]) for r, x in zoo.items()},
        "zoo_mean_gap": {"backprop": round(float(c_bp.sum() + b), 2), "equilibrium_propagation": round(float(c_eq.sum() + b), 2)},
        "zoo_backprop_gap_by_group": by_group(c_bp),
        "zoo_eqprop_gap_by_group": by_group(c_eq),
        "recordings": {},
    }
    for label, rec in recordings.items():
        x = _design_rows(est, est.transform([rec]))[0]
        z = (x - scaler.mean_) / scaler.scale_
        c = z * w
        moved = c - c_bp
        order = np.argsort(-moved)[:top]
        z_rel = (z - mu_bp) / sd_bp
        out["recordings"][label] = {
            "gap": round(float(c.sum() + b), 2),
            "gap_by_group": by_group(c),
            "median_abs_z_vs_zoo_backprop_by_block": {
                blk: round(float(np.median(np.abs(z_rel[i * len(base):(i + 1) * len(base)]))), 2) for i, blk in enumerate(blocks)},
            "features_pushing_to_eqprop": [
                {"feature": names[i], "contribution_vs_zoo_backprop": round(float(moved[i]), 2),
                 "z_vs_zoo_backprop": round(float(z_rel[i]), 1)} for i in order],
        }
    return out


#: The shipped default's split of its zoo (card: "held-out shards: 20% of each rule's shards
#: (seed 0)"); checked against the card's training-network count before use.
DEFAULT_HOLDOUT, DEFAULT_SPLIT_SEED = 0.2, 0


def heldout_zoo(store_url: str, loaded):
    """The model's zoo (``store_url``: one store, or several separated by commas, in the
    order given to train_default.py), its network table, the mask of the model's held-out
    networks and a function from a table position to that network's recording."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from train_default import load_zoos

    stores, table, held = load_zoos(store_url.split(","), 0, DEFAULT_HOLDOUT, DEFAULT_SPLIT_SEED)
    n_train = int((~held).sum())
    if n_train != loaded.card.n_networks:
        raise ValueError(f"{store_url}: the split gives {n_train} training networks, model {loaded.ref.name!r} "
                         f"was trained on {loaded.card.n_networks}: not the model's zoo or split")
    ids, store_of = table["network"].values.astype(str), table["store"].values.astype(int)
    return table, held, lambda i: stores[store_of[i]].recording(str(ids[i]))


def zoo_variant_check(store_url: str, rules=("backprop", "equilibrium_propagation"), model=None) -> dict:
    """Rule accuracy of the model's held-out networks of ``rules`` per implementation variant:
    the variants differ in what the output units are (logits, softmax, sigmoid, EqProp's
    output neurons or a read-out), so this shows how much of a rule's in-zoo accuracy is read
    off its output units."""
    loaded = resolve_model(model)
    table, held, recording = heldout_zoo(store_url, loaded)
    rule_of, variants = table["rule"].values.astype(str), table["variant"].values.astype(str)
    out = {}
    for rule in rules:
        for v in np.unique(variants[rule_of == rule]):
            own = np.flatnonzero(held & (rule_of == rule) & (variants == v))
            res = predict_recordings([recording(i) for i in own], model=loaded)
            out[f"{rule}/{v}"] = {"n": len(res), "rule_accuracy": round(float(np.mean([r.top_rule == rule for r in res])), 3),
                                  "named": dict(Counter(r.top_rule for r in res).most_common(3))}
    return out


def zoo_output_area_check(store_url: str, per_rule: int, model=None, seed: int = 0) -> dict:
    """The output-area confound inside the zoo: ``per_rule`` networks (``default`` variant) of
    each benchmark rule and of EqProp from the model's held-out shards, predicted from their
    full recordings and with the output area dropped (``drop_areas``), as a lab that records
    only hidden layers would see them."""
    from rulefinder.virtual import VirtualExperiment

    loaded = resolve_model(model)
    table, held, recording = heldout_zoo(store_url, loaded)
    rules, variants = table["rule"].values.astype(str), table["variant"].values.astype(str)
    rng = np.random.default_rng(seed)
    drop = VirtualExperiment([{"op": "drop_areas", "areas": ["output"]}], seed=seed)
    out = {}
    for rule in (*RULES, "equilibrium_propagation"):
        own = np.flatnonzero(held & (rules == rule) & (variants == "default"))
        recs = [recording(i) for i in rng.choice(own, min(per_rule, own.size), replace=False)]
        out[rule] = {}
        for name, rs in (("full", recs), ("output area dropped", [drop.apply(r) for r in recs])):
            res = predict_recordings(rs, model=loaded)
            out[rule][name] = {
                "n": len(rs),
                "p_true_rule": round(float(np.mean([r.rule_probabilities[rule] for r in res])), 3),
                "p_equilibrium_propagation": round(float(np.mean([r.rule_probabilities["equilibrium_propagation"] for r in res])), 3),
                "true_rule_named": round(float(np.mean([r.top_rule == rule for r in res])), 3),
                "named": dict(Counter(r.top_rule for r in res).most_common(3)),
            }
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--per-rule", type=int, default=12, help="Networks per rule.")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", default=None, help="Registry name (default: the shipped default).")
    ap.add_argument("--out", help="Also write the JSON here.")
    ap.add_argument("--diagnose", action="store_true", help="Also run the nuisance sweep on example-like backprop networks.")
    ap.add_argument("--seeds", type=int, default=8, help="Networks per nuisance in the sweep.")
    ap.add_argument("--zoo-rows", help="The zoo's feature-row cache (read only) for the feature comparison.")
    ap.add_argument("--zoo-store", help="The model's zoo store (read only; several separated by commas, in train_default.py's order): "
                    "its held-out networks with and without the output area.")
    ap.add_argument("--zoo-networks", type=int, default=24, help="Zoo networks per rule for --zoo-store.")
    args = ap.parse_args(argv)
    configs = draw_configs(args.per_rule, args.seed)
    out = {"benchmark": run_benchmark(configs, args.model)}
    # The same networks recorded the way the zoo records (64 probes, 21 even sessions, the
    # output units as an area, performance given): what is left is the implementation gap.
    zoo_like = dict(probes=64, sessions=21, spacing="even", output_area=True, performance=True)
    out["benchmark_zoo_like_recording"] = run_benchmark([replace(c, **zoo_like) for c in configs], args.model)
    if args.diagnose:
        out["nuisance_sweep"] = nuisance_sweep(EXAMPLE_LIKE, args.seeds, args.model)
    if args.zoo_rows:
        from rulefinder.recording import load_npz

        recs = {"examples/mlp_backprop.npz": load_npz(REPO / "examples/mlp_backprop.npz")}
        for name in ("base (example-like)", "probes 64", "output area recorded", "probes 64 + output area"):
            changes, rec_args = NUISANCES[name]
            recs[f"example-like seed 0, {name}"] = record(train(replace(EXAMPLE_LIKE, **changes)), **rec_args)
        out["zoo_comparison"] = zoo_comparison(recs, Path(args.zoo_rows), args.model)
    if args.zoo_store:
        out["zoo_output_area"] = zoo_output_area_check(args.zoo_store, args.zoo_networks, args.model, args.seed)
        out["zoo_variants"] = zoo_variant_check(args.zoo_store, model=args.model)
    text = json.dumps(out, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
