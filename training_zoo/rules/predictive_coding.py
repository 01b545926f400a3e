"""Predictive coding with inference learning (Whittington & Bogacz 2017)."""

from __future__ import annotations

import torch

from training_zoo.architectures import PopulationCNN, layer_pre_with
from training_zoo.rules.base import LearningRule, RuleStep, Variant
from training_zoo.dense import per_example_ce
from training_zoo.rules.registry import register


def output_energy(z, y, loss: str):
    """Summed output term of the free energy: cross-entropy of softmax(z), or 1/2 ||y - z||^2."""
    yy = y.unsqueeze(0).expand(z.shape[0], -1) if y.dim() == 1 else y
    if loss == "cross_entropy":
        return per_example_ce(z, yy).sum()
    target = torch.nn.functional.one_hot(yy, z.shape[-1]).to(z.dtype)
    return 0.5 * ((z - target) ** 2).sum()


def free_energy(net, x, values, ws, bs, y, precision: float, loss: str):
    """F summed over the M networks (each network's terms depend only on its own parameters and
    value nodes, so autograd of the sum gives every network its own gradient)."""
    h, total = x, 0.0
    n_hidden = net.n_layers - 1
    for layer in range(net.n_layers):
        mu = layer_pre_with(net, layer, h, ws[layer], bs[layer])
        if layer < n_hidden:
            total = total + 0.5 * ((values[layer] - mu) ** 2).sum()
            r = net.activation.f(values[layer])
            h = h + r if net.is_skip(layer) else r
        else:
            total = total + precision * output_energy(mu, y, loss)
    return total


def relax_value_nodes(net, x, y, steps: int, rate: float, precision: float, loss: str = "cross_entropy"):
    """Relax the value nodes by gradient descent on F from the feedforward pass; returns
    (values, feedforward pre-activations)."""
    pre, _ = net.forward(x)
    values = [a.detach().clone() for a in pre[:-1]]
    ws = [w.detach() for w in net.weights]
    bs = [b.detach() for b in net.biases]
    with torch.enable_grad():
        for _ in range(steps):
            leaves = [v.requires_grad_(True) for v in values]
            grads = torch.autograd.grad(free_energy(net, x, leaves, ws, bs, y, precision, loss), leaves)
            values = [(v - rate * g).detach() for v, g in zip(values, grads)]
    return values, pre


def relax_dense(net, x, y, steps: int, rate: float, precision: float, loss: str = "cross_entropy"):
    r"""The same relaxation for dense populations with the gradients written out (no autograd,
    about 3x faster); returns (activities, errors, feedforward pre-activations), errors[-1]
    being the output teaching error :math:`\gamma(y - \mathrm{softmax}(\mu_L))` (or
    :math:`\gamma(y - \mu_L)`)."""
    pre, _ = net.forward(x)
    n_hidden = net.n_layers - 1
    values = [a.clone() for a in pre[:n_hidden]]
    c = pre[-1].shape[-1]
    yy = y.unsqueeze(0).expand(net.m, -1) if y.dim() == 1 else y
    target = torch.nn.functional.one_hot(yy, c).to(pre[-1].dtype)
    f, df = net.activation.f, net.activation.df
    x = net.broadcast_input(x)

    def errors_of(values):
        acts, errs = [x], []
        for layer in range(net.n_layers):
            # mu_0 = W_0 x + b_0 does not depend on the value nodes: the forward pass's, reused
            mu = pre[0] if layer == 0 else net.layer_pre(layer, acts[-1])
            if layer < n_hidden:
                errs.append(values[layer] - mu)
                h = f(values[layer])
                acts.append(acts[-1] + h if net.is_skip(layer) else h)
            else:
                out = torch.softmax(mu, -1) if loss == "cross_entropy" else mu
                e = target - out
                errs.append(e.mul_(precision) if precision != 1.0 else e)
        return acts, errs

    acts, errs = errors_of(values)
    for _ in range(steps):
        # D_k = -dF/dh_k = W_k^T eps_k + [skip_k] D_{k+1}, from the top down; the gradient on
        # x_{k-1} is eps_{k-1} - f'(x_{k-1}) D_k (the same numbers as adding f' * (-D_k))
        grads = [None] * n_hidden
        d_h = None
        for layer in range(net.n_layers - 1, 0, -1):
            d = torch.bmm(errs[layer], net.weights[layer])
            if net.is_skip(layer) and d_h is not None:
                d.add_(d_h)
            d_h = d
            grads[layer - 1] = errs[layer - 1] - df(values[layer - 1]).mul_(d_h)
        # every gradient is taken before any value node moves; values are this function's clones
        for v, g in zip(values, grads):
            v.sub_(g.mul_(rate))
        acts, errs = errors_of(values)
    return acts, errs, pre


@register
class PredictiveCoding(LearningRule):
    r"""Inference learning in a predictive-coding network (Whittington & Bogacz 2017).

    Value nodes :math:`x_l` sit in the pre-activation space of every hidden layer; they imply
    activities :math:`h_0 = \text{input}`, :math:`h_l = f(x_l)` (``resmlp`` skip:
    :math:`h_l = h_{l-1} + f(x_l)`). Each layer predicts the next,
    :math:`\mu_l = W_l h_{l-1} + b_l`, with errors :math:`\varepsilon_l = x_l - \mu_l`. The output
    is clamped to the label through a cross-entropy term of precision :math:`\gamma`, so the
    free energy and the output error are

    .. math::
        F = \sum_{l<L} \tfrac12\lVert\varepsilon_l\rVert^2 + \gamma\,\mathrm{CE}(\mu_L, y),\qquad
        \varepsilon_L = \gamma\,(y - \mathrm{softmax}(\mu_L)).

    Inference: starting at the feedforward pass (:math:`x_l = \mu_l`, all hidden errors 0), the
    value nodes descend F for ``inference_steps`` steps of size ``inference_rate``:

    .. math::
        x_l \leftarrow x_l - \eta_x\big(\varepsilon_l - f'(x_l)\odot D_l\big),\quad
        D_l = W_{l+1}^\top\varepsilon_{l+1} + [\text{skip}_{l+1}]\,D_{l+1}.

    Learning (local, after inference): :math:`\Delta W_l \propto \varepsilon_l h_{l-1}^\top`,
    :math:`\Delta b_l \propto \varepsilon_l`; the descent direction is
    :math:`-\frac{1}{\gamma B}\sum_b \varepsilon_{l,b} h_{l-1,b}^\top` (dividing by
    :math:`\gamma` keeps the scale of a gradient). As inference converges and
    :math:`\gamma \to 0` (small errors) the errors approach :math:`\gamma` times the backprop
    deltas and the update approaches the cross-entropy gradient; with :math:`\gamma = 1` and few
    steps it departs from it. This is not the fixed-prediction variant (which equals backprop).

    Implementation: dense populations use the gradients written out (:func:`relax_dense`);
    ``cnn`` (value nodes on every conv feature map) uses autograd of F, summed over the
    population, on the value nodes and on the parameters (:func:`relax_value_nodes`). Variants: ``mse_output`` clamps the linear output to the target
    through a Gaussian (squared-error) term, :math:`\varepsilon_L = \gamma(y - \mu_L)`, as
    Whittington & Bogacz 2017's network does; ``short_inference`` runs 5 inference steps of
    size 0.2 (the few-iteration regime of later PC code bases).
    """

    id = "predictive_coding"
    family = "predictive_coding"
    reference = "Whittington & Bogacz 2017, Neural Computation; Rao & Ballard 1999"
    description = "Predictive coding: value nodes relaxed on a prediction-error energy, local error x activity updates"
    supports = ("mlp", "resmlp", "cnn")
    variants = {
        "default": Variant("Inference learning with a cross-entropy output term, 20 inference steps of 0.1."),
        "mse_output": Variant("Linear output clamped to the target by a squared-error (Gaussian) term, "
                              "as in Whittington & Bogacz 2017.", {"output_loss": "mse"}),
        "short_inference": Variant("5 inference steps of size 0.2.", {"inference_steps": 5, "inference_rate": 0.2}),
    }

    def __init__(self, inference_steps: int = 20, inference_rate: float = 0.1, precision: float = 1.0,
                 output_loss: str = "cross_entropy"):
        if output_loss not in ("cross_entropy", "mse"):
            raise ValueError(f"output_loss must be 'cross_entropy' or 'mse', got {output_loss!r}")
        self.inference_steps = int(inference_steps)
        self.inference_rate = float(inference_rate)
        self.precision = float(precision)
        self.output_loss = output_loss

    def step(self, net, state, x, y):
        x = net.broadcast_input(x)
        b = x.shape[0] if isinstance(net, PopulationCNN) else x.shape[1]
        if not isinstance(net, PopulationCNN):
            acts, errs, pre = relax_dense(net, x, y, self.inference_steps, self.inference_rate,
                                          self.precision, self.output_loss)
            scale = -1.0 / (self.precision * b)
            dws = [torch.bmm(e.transpose(1, 2), h) * scale for e, h in zip(errs, acts)]
            dbs = [e.sum(1) * scale for e in errs]
            return RuleStep(weights=dws, biases=dbs, loss=self._loss(pre[-1], y))
        values, pre = relax_value_nodes(net, x, y, self.inference_steps, self.inference_rate,
                                        self.precision, self.output_loss)
        ws = [w.detach().requires_grad_(True) for w in net.weights]
        bs = [v.detach().requires_grad_(True) for v in net.biases]
        with torch.enable_grad():
            energy = free_energy(net, x, values, ws, bs, y, self.precision, self.output_loss)
            grads = torch.autograd.grad(energy, [*ws, *bs])
        scale = 1.0 / (self.precision * b)
        n = net.n_layers
        return RuleStep(weights=[g * scale for g in grads[:n]], biases=[g * scale for g in grads[n:]],
                        loss=self._loss(pre[-1], y))

    def _loss(self, z, y):
        if self.output_loss == "cross_entropy":
            return per_example_ce(z, y).mean(1)
        yy = y.unsqueeze(0).expand(z.shape[0], -1) if y.dim() == 1 else y
        target = torch.nn.functional.one_hot(yy, z.shape[-1]).to(z.dtype)
        return 0.5 * ((z - target) ** 2).sum(-1).mean(1)
