"""Burstprop: burst-dependent plasticity in pyramidal neurons, rate form (Payeur et al. 2021)."""

from __future__ import annotations

import math

import torch

from training_zoo.dense import per_example_ce
from training_zoo.rules.base import LearningRule, RuleStep, Variant
from training_zoo.rules.feedback_alignment import _backward_map, random_feedback
from training_zoo.rules.node_perturbation import local_products
from training_zoo.rules.registry import register

FEEDBACKS = ("random", "symmetric")
CANCELLATIONS = ("learned", "exact")


@register
class Burstprop(LearningRule):
    r"""Burst-dependent plasticity, rate-based deep-network form (Payeur et al. 2021).

    Every hidden unit is a two-compartment pyramidal neuron. Its soma emits events at rate
    :math:`e_l = |f(a_l)|` (the feedforward activity; ``resmlp`` adds the skip,
    :math:`h_l = h_{l-1} + f(a_l)`); its apical dendrite receives the burst rates
    :math:`b_{l+1} = p_{l+1} e_{l+1}` of the layer above through feedback weights
    :math:`Y_{l+1}` and a cancelling recurrent input :math:`Z_{l+1} e_{l+1}` (the skip of
    ``resmlp`` routes the apical input of layer l+1 to layer l too):

    .. math::
        A_l = Y_{l+1}^\top b_{l+1} - Z_{l+1}^\top e_{l+1} + [\text{skip}]A_{l+1},\quad
        u_l = h(e_l)\odot A_l,\quad p_l = \sigma(\beta u_l + \alpha),\quad b_l = p_l\,e_l,

    with :math:`\alpha = \operatorname{logit}\bar p` (``baseline_burst_probability``). The
    dendritic gain :math:`h(e_l) = f'(a_l)/e_l` (for sigmoid units :math:`1 - e_l`, as in the
    paper) makes the update linear in :math:`f'(a_l)\,Y^\top\delta b` for weak apical input.

    Two passes per example. Teacher off: the output units burst at the baseline,
    :math:`b_L = \bar p\,e_L` (:math:`e_L = \mathrm{softmax}(z)`), giving :math:`p_l^{off}`.
    Teacher on: the output bursts carry the target, :math:`b_L = \bar p\,e_L + (y - e_L)`,
    giving :math:`p_l^{on}`. Plasticity is burst-dependent and event-gated,
    :math:`\Delta W_l \propto (p_l^{on} - p_l^{off})\,e_l\,h_{l-1}^\top`; returned descent
    directions are :math:`-\frac{1}{B\,\sigma'(\alpha)\beta}\sum_b (p^{on}-p^{off})_b e_b
    h_{l-1,b}^\top` (the factor puts the linear regime in gradient units); the readout gets
    the cross-entropy gradient :math:`-\frac1B\sum_b (y - e_L) h_{L-1}^\top`.

    Feedback ``"random"`` (default; Payeur et al.'s deep networks: fixed random :math:`Y`,
    Glorot scale, so the rule works by feedback alignment) or ``"symmetric"``
    (:math:`Y = W`, weight transport). Recurrent cancellation ``"learned"`` (default: Z is
    trained in the teacher-off pass to cancel the feedback,
    :math:`\min_Z \tfrac12\lVert Y^\top b^{off} - Z^\top e\rVert^2`, one normalised-LMS step of
    ``recurrent_lr / (1 + mean ||e||^2)`` per batch after the update is computed; Z starts at
    :math:`\bar p\,Y` plus Glorot noise of scale ``recurrent_init_noise``) or ``"exact"``
    (:math:`Z = \bar p Y` held exactly, so :math:`p^{off} = \bar p`). On conv layers
    :math:`Y^\top r` is the transposed convolution with kernels Y of W's shape.

    ``beta = 0.03`` (not a value from the paper): for rectified units the dendritic gain
    :math:`f'(a)/e = 1/a` is large for weakly driven units, and a steep burst nonlinearity
    saturates them, so burst probabilities work best near their linear regime. Chosen on a
    validation split carved from the training data, never the test set
    (``benchmarks/rule_hyperparameters.py``; docs/rules.md, "Rule constants chosen on a
    validation split": beta in {0.03, 0.1, 0.3, 1, 3} on digits, mnist5k_14 and mnist1d, mlp and
    resmlp, three seeds). It replaced 0.3, which had been picked on digits test accuracy.
    """

    id = "burstprop"
    family = "dendritic"
    reference = "Payeur, Guerguiev, Zenke, Richards & Naud 2021, Nature Neuroscience"
    description = "Burstprop: apical feedback of burst rates modulates burst probability; plasticity from burst-probability deviations"
    supports = ("mlp", "resmlp", "cnn")
    variants = {
        "default": Variant("Fixed random feedback, learned recurrent cancellation, teacher-on minus "
                           "teacher-off burst probability (Payeur et al. 2021's deep networks)."),
        "symmetric": Variant("Symmetric feedback Y = W (weight transport; the state feedback-pathway "
                             "plasticity drives Y towards).", {"feedback": "symmetric"}),
        "exact_cancellation": Variant("Random feedback with recurrent weights that cancel it exactly, "
                                      "Z = p_bar Y (baseline bursting without teacher).",
                                      {"cancellation": "exact"}),
    }

    def __init__(self, beta: float = 0.03, baseline_burst_probability: float = 0.2,
                 feedback: str = "random", cancellation: str = "learned", recurrent_lr: float = 0.1,
                 recurrent_init_noise: float = 0.5, min_event_rate: float = 1e-6):
        if feedback not in FEEDBACKS:
            raise ValueError(f"feedback must be one of {FEEDBACKS}, got {feedback!r}")
        if cancellation not in CANCELLATIONS:
            raise ValueError(f"cancellation must be one of {CANCELLATIONS}, got {cancellation!r}")
        self.beta = float(beta)
        self.baseline_burst_probability = float(baseline_burst_probability)
        self.feedback = feedback
        self.cancellation = cancellation
        self.recurrent_lr = float(recurrent_lr)
        self.recurrent_init_noise = float(recurrent_init_noise)
        self.min_event_rate = float(min_event_rate)

    def init_state(self, net, generator):
        state = {}
        if self.feedback == "random":
            state["feedback"] = random_feedback(net, generator)
        if self.cancellation == "learned":
            ys = state.get("feedback", net.weights)
            noise = random_feedback(net, generator, self.recurrent_init_noise)
            state["recurrent"] = [None] + [self.baseline_burst_probability * y.clone() + r
                                           for y, r in zip(ys[1:], noise[1:])]
        return state

    def feedbacks(self, net, state) -> tuple[list, list]:
        """(Y, Z) per weight layer (index 0 unused)."""
        ys = state.get("feedback", net.weights)
        zs = state["recurrent"] if self.cancellation == "learned" else [None] + [self.baseline_burst_probability * y for y in ys[1:]]
        return ys, zs

    def apical(self, net, ys, zs, bursts, events, pre):
        """Top-down pass: burst probabilities (and raw feedback minus cancellation per layer)
        of every hidden layer, from the output burst rate ``bursts``."""
        n = net.n_layers
        p_bar = self.baseline_burst_probability
        alpha = math.log(p_bar / (1.0 - p_bar))
        probs, raw = [None] * (n - 1), [None] * (n - 1)
        b_above, apical = bursts, None
        for layer in range(n - 2, -1, -1):
            like = pre[layer]
            own = down(net, layer + 1, b_above, ys[layer + 1], like) - down(net, layer + 1, events[layer + 1], zs[layer + 1], like)
            raw[layer] = own
            apical = own + apical if (net.is_skip(layer + 1) and apical is not None) else own
            e = events[layer]
            u = net.activation.df(pre[layer]) * apical / e.clamp_min(self.min_event_rate)
            probs[layer] = torch.sigmoid(self.beta * u + alpha)
            b_above = probs[layer] * e
        return probs, raw

    def step(self, net, state, x, y):
        x = net.broadcast_input(x)
        pre, post = net.forward(x)
        n = net.n_layers
        m, b, c = post[-1].shape
        yy = y.unsqueeze(0).expand(m, -1) if y.dim() == 1 else y
        p_bar = self.baseline_burst_probability
        gain = p_bar * (1.0 - p_bar) * self.beta  # sigma'(alpha) * beta
        out_events = torch.softmax(post[-1], -1)
        teacher = torch.nn.functional.one_hot(yy, c).to(x.dtype) - out_events
        events = [net.activation.f(a).abs() for a in pre[:-1]] + [out_events]
        ys, zs = self.feedbacks(net, state)
        p_off, raw_off = self.apical(net, ys, zs, p_bar * out_events, events, pre)
        p_on, _ = self.apical(net, ys, zs, p_bar * out_events + teacher, events, pre)
        deltas = [-(on - off) * e / (gain * b) for on, off, e in zip(p_on, p_off, events)]
        deltas.append(-teacher / b)
        dws, dbs = local_products(net, post[:n], deltas)
        if self.cancellation == "learned":
            self.train_recurrent(net, state, ys, p_off, events, pre, raw_off)
        return RuleStep(weights=dws, biases=dbs, loss=per_example_ce(post[-1], y).mean(1))

    def train_recurrent(self, net, state, ys, p_off, events, pre, raw_off) -> None:
        """Z_{l+1} <- Z_{l+1} - eta_Z dR/dZ, R = 1/2 ||Y^T b^off - Z^T e||^2 per example (mean)."""
        n = net.n_layers
        p_bar = self.baseline_burst_probability
        for layer in range(n - 1):
            above = layer + 1
            b_above = (p_bar * events[-1]) if above == n - 1 else p_off[above] * events[above]
            e = events[above]
            z = state["recurrent"][above]
            if e.dim() == 3 and pre[layer].dim() == 3:  # dense: dR/dZ = -e^T r / B
                r = torch.bmm(b_above, ys[above]) - torch.bmm(e, z)
                g = -torch.bmm(e.transpose(1, 2), r) / e.shape[1]
            else:
                z = z.detach().requires_grad_()
                with torch.enable_grad():
                    r = down(net, above, b_above, ys[above], pre[layer]) - down(net, above, e, z, pre[layer])
                    (g,) = torch.autograd.grad(0.5 * (r**2).sum() / e_batch(e), z)
            lr = self.recurrent_lr / (1.0 + (unit_flat(net, e) ** 2).sum(-1).mean(-1))
            with torch.no_grad():
                state["recurrent"][above] -= lr.view(-1, *([1] * (g.dim() - 1))) * g


def e_batch(t: torch.Tensor) -> int:
    return t.shape[0] if t.dim() == 4 else t.shape[1]


def unit_flat(net, t: torch.Tensor) -> torch.Tensor:
    """(M, B, units) view of a layer's tensor."""
    return net.unit_view(t) if t.dim() == 4 else t


def down(net, layer: int, r: torch.Tensor, k: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """K^T r: from weight layer ``layer``'s output space to its input's, in ``like``'s layout."""
    if like.dim() == 4 and k.dim() == 3:  # cnn readout: (M, B, C) -> flat units -> conv layout
        flat = torch.bmm(r, k)
        return flat.transpose(0, 1).reshape(like.shape)
    return _backward_map(net, layer, r, k, like)

