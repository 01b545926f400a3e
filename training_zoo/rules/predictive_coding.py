"""Predictive coding with inference learning (Whittington & Bogacz 2017)."""

from __future__ import annotations

import torch

from training_zoo.rules.base import LearningRule, RuleStep
from training_zoo.dense import per_example_ce
from training_zoo.rules.registry import register


def relax_value_nodes(net, x, y, steps: int, rate: float, precision: float):
    """Relax the value nodes; return (values, activities, errors, feedforward pre-activations).

    ``values[l]`` (M, B, n_{l+1}) are the value nodes of hidden layer l (pre-activation space),
    ``activities[k]`` the presynaptic activities they imply (``activities[0] = x``) and
    ``errors[l]`` the prediction errors (the last one is the output teaching error).
    """
    pre, _ = net.forward(x)
    n_hidden = net.n_layers - 1
    values = [a.clone() for a in pre[:n_hidden]]
    c = pre[-1].shape[-1]
    yy = y.unsqueeze(0).expand(net.m, -1) if y.dim() == 1 else y
    target = torch.nn.functional.one_hot(yy, c).to(pre[-1].dtype)
    f, df = net.activation.f, net.activation.df

    def errors_of(values):
        acts, errs = [net.broadcast_input(x)], []
        for layer in range(net.n_layers):
            mu = net.layer_pre(layer, acts[-1])
            if layer < n_hidden:
                errs.append(values[layer] - mu)
                h = f(values[layer])
                acts.append(acts[-1] + h if net.is_skip(layer) else h)
            else:
                errs.append(precision * (target - torch.softmax(mu, -1)))
        return acts, errs

    acts, errs = errors_of(values)
    for _ in range(steps):
        # dF/dh_k = -W_k^T eps_k + [skip_k] dF/dh_{k+1}, from the top down
        grads = [None] * n_hidden
        d_h = None
        for layer in range(net.n_layers - 1, 0, -1):
            d = -torch.bmm(errs[layer], net.weights[layer])
            d_h = d + d_h if (net.is_skip(layer) and d_h is not None) else d
            grads[layer - 1] = errs[layer - 1] + df(values[layer - 1]) * d_h
        values = [v - rate * g for v, g in zip(values, grads)]
        acts, errs = errors_of(values)
    return values, acts, errs, pre


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
    """

    id = "predictive_coding"
    family = "predictive_coding"
    reference = "Whittington & Bogacz 2017, Neural Computation; Rao & Ballard 1999"
    description = "Predictive coding: value nodes relaxed on a prediction-error energy, local error x activity updates"
    supports = ("mlp", "resmlp")

    def __init__(self, inference_steps: int = 20, inference_rate: float = 0.1, precision: float = 1.0):
        self.inference_steps = int(inference_steps)
        self.inference_rate = float(inference_rate)
        self.precision = float(precision)

    def step(self, net, state, x, y):
        x = net.broadcast_input(x)
        b = x.shape[1]
        _, acts, errs, pre = relax_value_nodes(
            net, x, y, self.inference_steps, self.inference_rate, self.precision
        )
        scale = -1.0 / (self.precision * b)
        dws = [torch.bmm(e.transpose(1, 2), h) * scale for e, h in zip(errs, acts)]
        dbs = [e.sum(1) * scale for e in errs]
        return RuleStep(weights=dws, biases=dbs, loss=per_example_ce(pre[-1], y).mean(1))
