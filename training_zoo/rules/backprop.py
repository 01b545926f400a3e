"""Backpropagation, and the autograd plumbing the gradient-like rules share."""

from __future__ import annotations

import torch

from training_zoo.architectures import functional_forward
from training_zoo.dense import cross_entropy_per_network
from training_zoo.rules.base import LearningRule, RuleStep
from training_zoo.rules.registry import register


def leaves(net) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The network's parameters as autograd leaves (sharing storage with the network)."""
    ws = [w.detach().requires_grad_() for w in net.weights]
    bs = [b.detach().requires_grad_() for b in net.biases]
    return ws, bs


def feedback_gradients(net, x, y, feedback=None):
    """Loss (M,) and the parameter updates of backprop with ``W_l`` replaced by ``feedback[l]``
    in the backward pass (``feedback=None``: exact backprop).

    The population loss is the SUM of the M networks' batch-mean cross-entropies, so that each
    network's gradient is its own: ``d(sum_m L_m)/dW_m = dL_m/dW_m``.
    """
    ws, bs = leaves(net)
    with torch.enable_grad():
        pre, post = functional_forward(net, x, ws, bs, feedback)
        loss = cross_entropy_per_network(post[-1], y)
        grads = torch.autograd.grad(loss.sum(), [*ws, *bs])
    n = len(ws)
    return loss.detach(), list(grads[:n]), list(grads[n:])


@register
class Backprop(LearningRule):
    """Backpropagation of the cross-entropy error (exact gradient).

    With a_l = W_l h_{l-1} + b_l, h_l = f(a_l) and L the batch-mean cross-entropy:

        delta_L = dL/dz = (softmax(z) - onehot(y)) / B
        delta_l = (W_{l+1}^T delta_{l+1}) * f'(a_l)          (resmlp: plus the skip's delta)
        dW_l = delta_l h_{l-1}^T,   db_l = sum_batch delta_l

    The direction handed to the optimizer is (dW_l, db_l). Computed by autograd on the stacked
    population (batched matmul / grouped convolution).
    """

    id = "backprop"
    family = "backprop"
    reference = "Rumelhart, Hinton & Williams 1986, Nature 323:533"
    description = "Exact gradient of the loss by backpropagating errors through the forward weights."
    supports = ("mlp", "resmlp", "cnn")

    def step(self, net, state, x, y) -> RuleStep:
        loss, gw, gb = feedback_gradients(net, x, y)
        return RuleStep(weights=gw, biases=gb, loss=loss)
