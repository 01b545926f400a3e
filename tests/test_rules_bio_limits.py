"""Limits in which the energy-based rules become backprop.

* Equilibrium propagation: as beta -> 0 the symmetric-nudging update approaches the gradient of
  the cross-entropy at the free fixed point (recurrent backprop through the converged relaxation).
  With one hidden layer the readout lies outside the energy, so the free fixed point *is* the
  feedforward pass and the comparison is with plain feedforward backprop.
* Predictive coding: with many inference steps and a small output precision (small errors) the
  update approaches the backprop gradient of the feedforward network.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from training_zoo.dense import DenseStack, cross_entropy_per_network
from training_zoo.rules import get_rule
from training_zoo.rules.equilibrium_propagation import HopfieldRelaxation


def cosine(step, grads) -> float:
    a = torch.cat([d.flatten() for d in [*step.weights, *step.biases]])
    b = torch.cat([d.flatten() for d in grads])
    return float(F.cosine_similarity(a, b, dim=0))


def case(sizes, residual, activation="tanh", m=2, b=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    net = DenseStack(sizes, m, activation=activation, residual=residual, generator=g, dtype=torch.float64)
    x = torch.randn(b, sizes[0], generator=g, dtype=torch.float64)
    y = torch.randint(0, sizes[-1], (b,), generator=g)
    return net, x, y


def backprop(net, x, y):
    ps = [p.clone().requires_grad_(True) for p in net.parameters()]
    n = net.n_layers
    h = net.broadcast_input(x)
    for layer in range(n):
        a = torch.baddbmm(ps[n + layer].unsqueeze(1), h, ps[layer].transpose(1, 2))
        h = net.layer_post(layer, a, h)
    return torch.autograd.grad(cross_entropy_per_network(h, y).sum(), ps)


def fixed_point_gradient(net, x, y, steps):
    """Gradient of CE at the free fixed point, by backprop through the converged relaxation."""
    ps = [p.clone().requires_grad_(True) for p in net.parameters()]
    n = net.n_layers
    shadow = DenseStack(net.sizes, net.m, activation=net.activation.name, residual=net.residual,
                        dtype=torch.float64)
    shadow.weights, shadow.biases = ps[:n], ps[n:]
    relax = HopfieldRelaxation(None)
    xb = shadow.broadcast_input(x)
    states = relax.relax(shadow, xb, relax.feedforward(shadow, xb), 0.0, None, steps)
    z = shadow.layer_pre(n - 1, relax.activities(shadow, xb, states)[-1])
    return torch.autograd.grad(cross_entropy_per_network(z, y).sum(), ps)


@pytest.mark.parametrize("residual", [False, True], ids=["mlp", "resmlp"])
def test_eqprop_approaches_the_fixed_point_gradient_as_beta_shrinks(residual):
    net, x, y = case([6, 8, 8, 8, 4], residual)
    steps = 300
    reference = fixed_point_gradient(net, x, y, steps)
    cosines = []
    for beta in (0.5, 0.05, 0.005):
        rule = get_rule("equilibrium_propagation")(beta=beta, free_steps=steps, nudge_steps=steps, state_bound=None,
                                                   output="softmax_readout", init="feedforward")
        cosines.append(cosine(rule.step(net, {}, x, y), reference))
    assert cosines[-1] > 0.99, cosines
    assert cosines[-1] >= cosines[0] - 1e-9, cosines


def test_eqprop_with_one_hidden_layer_approaches_feedforward_backprop():
    net, x, y = case([6, 10, 4], residual=False)
    rule = get_rule("equilibrium_propagation")(beta=0.01, free_steps=5, nudge_steps=200, state_bound=None,
                                               output="softmax_readout", init="feedforward")
    assert cosine(rule.step(net, {}, x, y), backprop(net, x, y)) > 0.999


@pytest.mark.parametrize("residual", [False, True], ids=["mlp", "resmlp"])
def test_predictive_coding_approaches_backprop_with_small_errors(residual):
    net, x, y = case([6, 8, 8, 8, 4], residual)
    reference = backprop(net, x, y)
    few = get_rule("predictive_coding")(inference_steps=2, inference_rate=0.1, precision=1.0)
    many = get_rule("predictive_coding")(inference_steps=400, inference_rate=0.1, precision=1e-3)
    c_few = cosine(few.step(net, {}, x, y), reference)
    c_many = cosine(many.step(net, {}, x, y), reference)
    assert c_many > 0.999, (c_few, c_many)
    assert c_many > c_few, (c_few, c_many)
