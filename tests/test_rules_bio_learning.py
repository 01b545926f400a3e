"""Every biologically motivated rule really assigns credit on sklearn digits.

Yardstick (as in docs/rules.md and tests/test_zoo_learning.py): the same architecture with
frozen random hidden layers and only the readout trained. Gradient-approximating rules
(EqProp, PC, DTP, burstprop, BrainProp) must gain at least half of backprop's gain over it;
node perturbation, Hebbian and Forward-Forward must beat it clearly. Every rule, the baseline
and backprop get the same small learning-rate sweep per optimizer and are judged by their best
network; accuracy is the rule's own prediction (``rule.predict`` where a rule defines one).
"""

from __future__ import annotations

import pytest
import torch

from training_zoo.dense import DenseStack, cross_entropy_per_network, output_error
from training_zoo.optimizers import make_optimizer
from training_zoo.rules import get_rule
from training_zoo.rules.base import LearningRule, RuleStep
from training_zoo.tasks import load_task

LRS = {"sgd": [0.01, 0.03, 0.1, 0.3, 1.0], "adam": [3e-4, 1e-3, 3e-3, 1e-2, 3e-2]}
EPOCHS = 5
RULE_EPOCHS = {"node_perturbation": 20}  # canonical (one-pass) node perturbation: see test_zoo_learning
# ... and 20 through a resmlp skip, where the random-feature baseline is strong (its plateau)
# Forward-Forward through a resmlp skip (its normalised input added to each layer's output)
# needs 20 epochs too, as measured with the unit-RMS default
RESMLP_RULE_EPOCHS = {"node_perturbation": 20, "forward_forward": 20}
BATCH = 32
WIDTH = 32  # narrow enough that random hidden features are clearly worse than learned ones
HALF_GAIN = 0.5
CLEAR_FRACTION, CLEAR_MIN = 0.2, 0.01
GRADIENT_APPROXIMATING = ["equilibrium_propagation", "predictive_coding",
                          "difference_target_propagation", "burstprop", "brainprop"]
CLEAR_BAR = ["node_perturbation", "hebbian", "forward_forward"]


class Backprop(LearningRule):
    """Exact gradient by autograd (the upper yardstick)."""

    def step(self, net, state, x, y):
        ps = [p.detach().requires_grad_(True) for p in net.parameters()]
        n = net.n_layers
        h = net.broadcast_input(x)
        for layer in range(n):
            h = net.layer_post(layer, torch.baddbmm(ps[n + layer].unsqueeze(1), h, ps[layer].transpose(1, 2)), h)
        loss = cross_entropy_per_network(h, y)
        grads = torch.autograd.grad(loss.sum(), ps)
        return RuleStep(list(grads[:n]), list(grads[n:]), loss.detach())


class ReadoutOnly(LearningRule):
    """Frozen random hidden layers; the readout gets its exact gradient (the lower yardstick)."""

    def step(self, net, state, x, y):
        _, post = net.forward(x)
        e = output_error(post[-1], y)
        dws = [torch.zeros_like(w) for w in net.weights]
        dbs = [torch.zeros_like(b) for b in net.biases]
        dws[-1] = torch.bmm(e.transpose(1, 2), post[-2])
        dbs[-1] = e.sum(1)
        return RuleStep(dws, dbs, cross_entropy_per_network(post[-1], y))


def best_accuracy(rule, task, residual: bool, depth: int = 2, seed: int = 0, epochs: float = EPOCHS) -> float:
    sizes = [task.n_features] + [WIDTH] * depth + [task.n_classes]
    steps = int(epochs * len(task.x_train) / BATCH)
    best = 0.0
    for opt, lrs in LRS.items():
        g = torch.Generator().manual_seed(seed)
        net = DenseStack(sizes, len(lrs), residual=residual, generator=g)
        state = rule.init_state(net, g)
        optimizer = make_optimizer(opt, net.parameters(), torch.tensor(lrs))
        batches = torch.Generator().manual_seed(seed + 1)
        for _ in range(steps):
            idx = torch.randint(0, len(task.x_train), (BATCH,), generator=batches)
            step = rule.step(net, state, task.x_train[idx], task.y_train[idx])
            optimizer.step([*step.weights, *step.biases])
        with torch.no_grad():
            predict = getattr(rule, "predict", None)
            z = predict(net, state, task.x_test) if predict else net.logits(task.x_test)
            acc = torch.nan_to_num((z.argmax(-1) == task.y_test).double().mean(1), nan=0.0)
        best = max(best, float(acc.max()))
    return best


@pytest.fixture(scope="module")
def task():
    torch.set_num_threads(1)
    return load_task("digits")


@pytest.fixture(scope="module")
def yardsticks(task):
    return {False: (best_accuracy(ReadoutOnly(), task, False), best_accuracy(Backprop(), task, False))}


@pytest.fixture(scope="module")
def residual_yardsticks(task):
    return best_accuracy(ReadoutOnly(), task, True), best_accuracy(Backprop(), task, True)


def check(rule_id, acc, base, bp):
    gain = bp - base
    if rule_id in GRADIENT_APPROXIMATING:
        bar = base + HALF_GAIN * gain
    else:
        bar = base + max(CLEAR_FRACTION * gain, CLEAR_MIN)
    assert acc >= bar, f"{rule_id}: {acc:.3f} < bar {bar:.3f} (baseline {base:.3f}, backprop {bp:.3f})"


def test_backprop_beats_the_random_feature_baseline(yardsticks):
    base, bp = yardsticks[False]
    assert bp > base + 0.05, (base, bp)


@pytest.mark.parametrize("rule_id", GRADIENT_APPROXIMATING + CLEAR_BAR)
def test_rule_assigns_credit_on_digits(rule_id, task, yardsticks):
    base, bp = yardsticks[False]
    check(rule_id, best_accuracy(get_rule(rule_id)(), task, residual=False,
                                 epochs=RULE_EPOCHS.get(rule_id, EPOCHS)), base, bp)


# Rules known to fall short through a resmlp skip (xfail). The identity skip keeps the random
# first-layer features, which makes the baseline strong (about 0.90 vs 0.77 without the skip);
# Hebbian (SoftHebb) features now clearly beat it there too.
RESIDUAL_SHORTFALL: dict[str, str] = {}


@pytest.mark.slow
@pytest.mark.parametrize(
    "rule_id",
    [pytest.param(r, marks=pytest.mark.xfail(reason=RESIDUAL_SHORTFALL[r], strict=False))
     if r in RESIDUAL_SHORTFALL else r for r in GRADIENT_APPROXIMATING + CLEAR_BAR],
)
def test_rule_assigns_credit_on_digits_resmlp(rule_id, task, residual_yardsticks):
    base, bp = residual_yardsticks
    check(rule_id, best_accuracy(get_rule(rule_id)(), task, residual=True,
                                 epochs=RESMLP_RULE_EPOCHS.get(rule_id, EPOCHS)), base, bp)
