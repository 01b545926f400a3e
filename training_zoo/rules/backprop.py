"""Backpropagation, and the autograd plumbing the gradient-like rules share."""

from __future__ import annotations

import torch

from training_zoo.architectures import functional_forward
from training_zoo.dense import cross_entropy_per_network
from training_zoo.rules.base import LearningRule, RuleStep, Variant
from training_zoo.rules.registry import register


def leaves(net) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The network's parameters as autograd leaves (sharing storage with the network)."""
    ws = [w.detach().requires_grad_() for w in net.weights]
    bs = [b.detach().requires_grad_() for b in net.biases]
    return ws, bs


LOSSES = ("cross_entropy", "sigmoid_mse")


def output_loss(z: torch.Tensor, y: torch.Tensor, loss: str = "cross_entropy") -> torch.Tensor:
    """(M,) batch-mean loss of the output pre-activations z (M, B, C): the cross-entropy of
    softmax(z), or ``sigmoid_mse``: 1/2 ||sigmoid(z) - onehot(y)||^2."""
    if loss == "cross_entropy":
        return cross_entropy_per_network(z, y)
    if loss == "sigmoid_mse":
        yy = y.unsqueeze(0).expand(z.shape[0], -1) if y.dim() == 1 else y
        target = torch.nn.functional.one_hot(yy, z.shape[-1]).to(z.dtype)
        return 0.5 * ((torch.sigmoid(z) - target) ** 2).sum(-1).mean(1)
    raise ValueError(f"unknown loss {loss!r}; known: {', '.join(LOSSES)}")


def feedback_gradients(net, x, y, feedback=None, loss: str = "cross_entropy"):
    """Loss (M,) and the parameter updates of backprop with ``W_l`` replaced by ``feedback[l]``
    in the backward pass (``feedback=None``: exact backprop).

    The population loss is the SUM of the M networks' batch-mean losses (``loss``, see
    :func:`output_loss`), so that each network's gradient is its own:
    ``d(sum_m L_m)/dW_m = dL_m/dW_m``.
    """
    ws, bs = leaves(net)
    with torch.enable_grad():
        pre, post = functional_forward(net, x, ws, bs, feedback)
        loss = output_loss(post[-1], y, loss)
        grads = torch.autograd.grad(loss.sum(), [*ws, *bs])
    n = len(ws)
    return loss.detach(), list(grads[:n]), list(grads[n:])


@register
class Backprop(LearningRule):
    r"""Backpropagation of the cross-entropy error (exact gradient).

    With a_l = W_l h_{l-1} + b_l, h_l = f(a_l) and L the batch-mean cross-entropy:

        delta_L = dL/dz = (softmax(z) - onehot(y)) / B
        delta_l = (W_{l+1}^T delta_{l+1}) * f'(a_l)          (resmlp: plus the skip's delta)
        dW_l = delta_l h_{l-1}^T,   db_l = sum_batch delta_l

    The direction handed to the optimizer is (dW_l, db_l). Computed by autograd on the stacked
    population (batched matmul / grouped convolution).

    Implementation variants (the output layer, on which implementations differ): the default
    is a linear readout whose logits feed a cross-entropy loss (``nn.Linear`` +
    ``CrossEntropyLoss``); ``softmax_units`` has the same gradient but its output units are
    the softmax probabilities (a softmax output layer + NLL loss), which is what a recording of
    its output shows; ``sigmoid_mse`` has sigmoid output units trained with the squared error
    to the one-hot target, :math:`\delta_L = (\sigma(z) - y)\,\sigma'(z)/B` (the classic
    form, still common in biologically motivated code bases).
    """

    id = "backprop"
    family = "backprop"
    reference = "Rumelhart, Hinton & Williams 1986, Nature 323:533"
    description = "Exact gradient of the loss by backpropagating errors through the forward weights."
    supports = ("mlp", "resmlp", "cnn")
    variants = {
        "default": Variant("Linear readout (logits) with the cross-entropy loss."),
        "softmax_units": Variant("Softmax output units with the negative log-likelihood: the same "
                                 "gradient, the output units are probabilities.", {"output": "softmax"}),
        "sigmoid_mse": Variant("Sigmoid output units trained with the squared error to the one-hot target.",
                               {"output": "sigmoid"}),
    }
    OUTPUTS = {"logits": ("cross_entropy", "logits"), "softmax": ("cross_entropy", "softmax"),
               "sigmoid": ("sigmoid_mse", "sigmoid")}

    def __init__(self, output: str = "logits"):
        if output not in self.OUTPUTS:
            raise ValueError(f"output must be one of {tuple(self.OUTPUTS)}, got {output!r}")
        self.output = output

    @property
    def output_units(self) -> str:
        """What the network's output units are (for recordings)."""
        return self.OUTPUTS[self.output][1]

    def step(self, net, state, x, y) -> RuleStep:
        loss, gw, gb = feedback_gradients(net, x, y, loss=self.OUTPUTS[self.output][0])
        return RuleStep(weights=gw, biases=gb, loss=loss)
