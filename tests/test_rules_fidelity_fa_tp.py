"""The feedback-alignment family, target propagation, burstprop and node perturbation are the
rules their papers (and authors' code) define; each test here failed on the code as of 8379dfa.

Also: every rule of these files has at least two implementation variants, every variant runs
on ``mlp``, ``resmlp`` and ``cnn``, and cnn updates equal per-network references.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from training_zoo.architectures import PopulationCNN, build_network
from training_zoo.dense import DenseStack
from training_zoo.rules import get_rule
from training_zoo.tasks import load_task
from training_zoo.trainer import train_population

F64 = torch.float64
MY_RULES = ["feedback_alignment", "direct_feedback_alignment", "sign_symmetry", "kolen_pollack",
            "weight_mirror", "information_alignment", "difference_target_propagation", "burstprop",
            "node_perturbation"]


@pytest.fixture(scope="module")
def digits():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small ops on a shared machine
    yield load_task("digits")
    torch.set_num_threads(threads)


def dense(sizes=(20, 64, 48, 10), m=4, residual=False, activation="tanh", seed=0):
    return DenseStack(list(sizes), m, activation=activation, residual=residual,
                      generator=torch.Generator().manual_seed(seed), dtype=F64)


def cnn(m=2, activation="tanh", seed=0):
    return PopulationCNN((1, 6, 6), [2, 3], 3, m, activation=activation,
                         generator=torch.Generator().manual_seed(seed), dtype=F64)


def batch(n_in, b=6, c=None, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, n_in, generator=g, dtype=F64), torch.randint(0, c, (b,), generator=g)


# ----------------------------------------------------------------------------- feedback scales
def test_feedback_alignment_draws_feedback_at_the_glorot_scale():
    net = dense()
    state = get_rule("feedback_alignment")().init_state(net, torch.Generator().manual_seed(0))
    for w, b in zip(net.weights[1:], state["B"][1:]):
        n_out, n_in = w.shape[1:]
        bound = math.sqrt(6.0 / (n_in + n_out))
        assert float(b.abs().max()) <= bound
        assert float(b.std()) == pytest.approx(bound / math.sqrt(3), rel=0.05)


def test_direct_feedback_alignment_draws_feedback_at_the_glorot_scale():
    net = dense(m=8)
    state = get_rule("direct_feedback_alignment")().init_state(net, torch.Generator().manual_seed(0))
    for d in state["D"]:
        n_classes, units = d.shape[1:]
        assert float(d.std()) == pytest.approx(math.sqrt(2.0 / (n_classes + units)), rel=0.05)


def test_feedback_init_variants_differ_in_scale():
    net = dense()
    cls = get_rule("feedback_alignment")
    std = {v: float(cls.from_variant(v).init_state(net, torch.Generator().manual_seed(0))["B"][1].std())
           for v in ("default", "fan_in_feedback", "gaussian_feedback")}
    fan_in = net.weights[1].shape[-1]
    assert std["fan_in_feedback"] == pytest.approx(1 / math.sqrt(3 * fan_in), rel=0.05)
    assert std["gaussian_feedback"] == pytest.approx(math.sqrt(2 / fan_in), rel=0.05)


def test_sign_symmetry_feedback_has_a_fixed_scale_not_the_weights_magnitude():
    """uSF (Liao et al. 2016): B = s sign(W) with s fixed, so scaling W leaves B unchanged."""
    net = dense()
    rule = get_rule("sign_symmetry")()
    state = rule.init_state(net, torch.Generator().manual_seed(0))
    before = rule.feedback(net, state)
    for w in net.weights:
        w.mul_(3.0)
    after = rule.feedback(net, state)
    for layer in range(1, net.n_layers):
        torch.testing.assert_close(before[layer], after[layer])
        n_out, n_in = net.weights[layer].shape[1:]
        torch.testing.assert_close(before[layer].abs(), torch.full_like(before[layer], math.sqrt(2 / (n_in + n_out))))
        assert torch.equal(torch.sign(before[layer]), torch.sign(net.weights[layer]))


def test_sign_symmetry_frsf_fixed_and_brsf_batchwise_random_magnitudes():
    net = dense()
    x, y = batch(20, c=10)
    cls = get_rule("sign_symmetry")
    for variant, fixed in (("frsf", True), ("brsf", False)):
        rule = cls.from_variant(variant)
        state = rule.init_state(net, torch.Generator().manual_seed(0))
        fb1 = rule.feedback(net, state)
        fb2 = rule.feedback(net, state)
        for layer in range(1, net.n_layers):
            assert torch.equal(torch.sign(fb1[layer]), torch.sign(net.weights[layer]))
            assert fb1[layer].abs().std() > 0  # random magnitudes, not one scale
            assert torch.equal(fb1[layer], fb2[layer]) == fixed
        rule.step(net, state, x, y)


# ----------------------------------------------------------------------------- Kolen-Pollack
def heavy_ball(lr, lam, steps, mu=0.9):
    """||W - B|| / ||W_0 - B_0|| under momentum: v_t = mu v_{t-1} + lam c_t, c_{t+1} = c_t - lr v_t."""
    c, v = 1.0, 0.0
    for t in range(steps):
        v = (mu * v if t else 0.0) + lam * c
        c -= lr * v
    return c


@pytest.mark.parametrize("family", ["mlp", "cnn"])
@pytest.mark.parametrize("optimizer,lr", [("sgd", 0.1), ("momentum", 0.02), ("adam", 1e-3)])
def test_kolen_pollack_difference_decays_geometrically_through_the_shared_optimizer(digits, optimizer, lr, family):
    """Akrout et al. 2019: W and B get the same update and weight decay through the same
    optimizer, so W - B obeys the optimizer's linear recurrence on lambda ||D||^2 / 2."""
    lam, steps = 0.1, 100
    ratios = []
    for t in (steps // 2, steps):
        net = build_network({"family": family, "depth": 2, "width": 32, "channels": [4, 8]},
                            digits.input_shape, digits.n_classes, 2, generator=torch.Generator().manual_seed(0))
        rule = get_rule("kolen_pollack")(weight_decay=lam)
        b0 = rule.init_state(net, torch.Generator().manual_seed(0))["B"]  # what the trainer draws for seed 0
        d0 = [(w - b).reshape(2, -1).norm(dim=1) for w, b in zip(net.weights[1:], b0[1:])]
        res = train_population(rule, net, digits, optimizer, lr=lr, max_steps=t, seed=0, final_eval=False)
        ratios.append(torch.stack([(w - b).reshape(2, -1).norm(dim=1) / n0
                                   for w, b, n0 in zip(net.weights[1:], res["state"]["B"][1:], d0)]))
    if optimizer == "sgd":
        torch.testing.assert_close(ratios[-1], torch.full_like(ratios[-1], (1 - lr * lam) ** steps), rtol=1e-4, atol=0)
    elif optimizer == "momentum":
        torch.testing.assert_close(ratios[-1], torch.full_like(ratios[-1], heavy_ball(lr, lam, steps)), rtol=1e-3, atol=0)
    else:  # Adam: element-wise rate lr lam / sqrt(v): shrinks steadily, no closed form
        assert (ratios[1] < ratios[0]).all() and (ratios[0] < 1).all() and (ratios[1] < 0.8).all(), ratios


def test_kolen_pollack_separate_sgd_variant_keeps_b_out_of_the_optimizer(digits):
    net = build_network({"family": "mlp", "depth": 2, "width": 32}, digits.input_shape, digits.n_classes, 2,
                        generator=torch.Generator().manual_seed(0))
    rule = get_rule("kolen_pollack").from_variant("separate_sgd")
    res = train_population(rule, net, digits, "adam", lr=1e-3, max_steps=3, seed=0, final_eval=False)
    assert type(res["state"]["B_optimizer"]).__name__ == "SGD"


# ----------------------------------------------------------------------------- node perturbation
def test_node_perturbation_default_perturbs_every_layer_in_one_noisy_pass():
    net = dense()
    rule = get_rule("node_perturbation")()
    assert rule.sigma <= 0.01 and not rule.layerwise
    state = rule.init_state(net, torch.Generator().manual_seed(0))
    assert rule.draws(net) == 1
    noise = rule.sample_noise(net, state, 6)
    for xi in noise:
        assert xi.shape[1] == 6 and bool((xi != 0).all())  # one pass, every node of every layer


def test_node_perturbation_estimates_the_gradient_in_expectation():
    """Averaged over many draws, the canonical estimate approaches backprop's gradient."""
    net = dense(sizes=(6, 5, 4), m=1)
    x, y = batch(6, b=4, c=4)
    rule = get_rule("node_perturbation")(samples=4000)
    state = rule.init_state(net, torch.Generator().manual_seed(0))
    est = rule.step(net, state, x, y)
    bp = get_rule("backprop")().step(net, {}, x, y)
    for a, b in zip(est.weights, bp.weights):
        cos = F.cosine_similarity(a.flatten(), b.flatten(), dim=0)
        assert cos > 0.9, cos
