"""Yardsticks for the learning rules (not registered as rules).

A rule that assigns no credit to hidden layers still learns something: the readout alone
on random hidden features does well on easy data. :class:`ReadoutOnly` is that baseline;
a rule *assigns credit* only if it beats it (see docs/rules.md for the bars).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import torch

from training_zoo.dense import cross_entropy_per_network, output_error
from training_zoo.rules.base import LearningRule, RuleStep

#: Rules that approximate the gradient must gain at least this fraction of backprop's gain
#: over the readout-only baseline; the others (below) must beat the baseline clearly.
HALF_GAIN = 0.5
#: Rules judged by "beats the baseline clearly" rather than by the half-gain bar.
CLEAR_BAR_RULES = ("node_perturbation", "hebbian", "forward_forward")
CLEAR_BAR_FAMILIES = ("hebbian", "local_objective")
#: "Clearly": the margin over the baseline, as a fraction of backprop's gain (and at least
#: ``CLEAR_MIN`` accuracy).
CLEAR_FRACTION = 0.2
CLEAR_MIN = 0.01


class ReadoutOnly(LearningRule):
    """Frozen random hidden layers; only the linear readout learns (exact gradient):

        dW_L = e h_{L-1}^T,  db_L = sum_batch e,   dW_l = 0, db_l = 0 for l < L.
    """

    id = "readout_only"
    family = "backprop"
    reference = "baseline (random features)"
    description = "Frozen random hidden layers, readout trained by its gradient."
    supports = ("mlp", "resmlp", "cnn")

    def step(self, net, state, x, y) -> RuleStep:
        with torch.no_grad():
            _, post = net.forward(x)
            logits = post[-1]
            loss = cross_entropy_per_network(logits, y)
            e = output_error(logits, y)
            h = post[-2]
            if h.dim() == 4:
                h = net.unit_view(h)
            h = h.expand(net.m, -1, -1) if h.shape[0] != net.m else h
            gw = [torch.zeros_like(w) for w in net.weights]
            gb = [torch.zeros_like(b) for b in net.biases]
            gw[-1] = torch.bmm(e.transpose(1, 2), h)
            gb[-1] = e.sum(1)
        return RuleStep(weights=gw, biases=gb, loss=loss)


def bar_kind(rule_id: str, family: str) -> str:
    """``"half_gain"`` or ``"clear"``: which bar a rule is held to."""
    return "clear" if rule_id in CLEAR_BAR_RULES or family in CLEAR_BAR_FAMILIES else "half_gain"


def passes_bar(kind: str, acc: float, baseline: float, backprop: float) -> bool:
    gain = backprop - baseline
    if kind == "half_gain":
        return acc - baseline >= HALF_GAIN * gain
    return acc - baseline >= max(CLEAR_FRACTION * gain, CLEAR_MIN)


def best_accuracy(rule, arch: dict, task, *, m_lrs: dict, epochs: float, batch_size: int = 32,
                  seed: int = 0, init: str = "default") -> dict:
    """Train ``rule`` on ``task`` over a small learning-rate sweep per optimizer (one population
    per optimizer) and return the best non-diverged test accuracy with its lr and optimizer.

    ``m_lrs``: optimizer -> list of learning rates. All networks share the init seed, so the
    sweep compares learning rates, not initialisations.
    """
    from training_zoo.architectures import build_network, reinitialise
    from training_zoo.trainer import train_population

    best = {"accuracy": -1.0}
    for opt, lrs in m_lrs.items():
        m = len(lrs)
        net = build_network(arch, task.input_shape, task.n_classes, m)
        reinitialise(net, [init] * m, [1.0] * m, [seed] * m)
        res = train_population(rule, net, task, opt, lr=torch.tensor(lrs, dtype=torch.float32),
                               epochs=epochs, batch_size=batch_size, seed=seed)
        acc = torch.where(res["diverged"], torch.zeros_like(res["test_accuracy"]), res["test_accuracy"])
        i = int(acc.argmax())
        if float(acc[i]) > best["accuracy"]:
            best = {"accuracy": float(acc[i]), "lr": float(lrs[i]), "optimizer": opt,
                    "seconds": res["seconds"]}
    return best


# ------------------------------------------------------------------ the `learned` flag
#: Where the learning bars live: one entry per task, architecture family and optimizer,
#: written by ``python benchmarks/learning_reference.py`` (docs/zoo.md, "Which networks learned").
REFERENCE_PATH = Path(__file__).resolve().parent / "learning_reference.json"


@functools.lru_cache(maxsize=4)
def load_reference(path: str | None = None) -> dict:
    """The shipped reference table: ``{"cells": {"task|arch_family|optimizer": {...}}, ...}``."""
    p = Path(path) if path else REFERENCE_PATH
    if not p.exists():
        return {"cells": {}}
    data = json.loads(p.read_text())
    if not isinstance(data, dict) or not isinstance(data.get("cells"), dict):
        raise ValueError(f"{p}: expected a JSON object with a 'cells' mapping (see benchmarks/learning_reference.py)")
    return data


def reference_key(task: str, arch_family: str, optimizer: str) -> str:
    return f"{task}|{arch_family}|{optimizer}"


def bar_from(baseline: float, backprop_median: float) -> float:
    """The learning bar: baseline + half of (backprop's median - baseline); the baseline
    itself where backprop's median does not beat it."""
    return float(baseline + HALF_GAIN * max(0.0, backprop_median - baseline))


def learned_threshold(task: str, arch_family: str, optimizer: str, path: str | None = None) -> float | None:
    """The final test accuracy a network of this task, architecture family and optimizer must
    reach to count as ``learned``; ``None`` where the reference table has no entry."""
    cell = load_reference(path)["cells"].get(reference_key(task, arch_family, optimizer))
    return None if cell is None else bar_from(cell["baseline"], cell["backprop_median"])


def learned(accuracy: float, diverged: bool, threshold: float | None) -> bool | None:
    """One definition of a network that learned: not diverged and final test accuracy >= bar."""
    if threshold is None:
        return None
    return bool(not diverged and accuracy >= threshold)
