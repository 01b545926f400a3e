"""Burstprop: burst-dependent plasticity in pyramidal neurons, rate form (Payeur et al. 2021)."""

from __future__ import annotations

import math

import torch

from training_zoo.dense import init_weight
from training_zoo.rules.base import LearningRule, RuleStep
from training_zoo.dense import per_example_ce
from training_zoo.rules.registry import register


@register
class Burstprop(LearningRule):
    r"""Burst-dependent plasticity, rate-based deep-network form (Payeur et al. 2021).

    Every hidden unit is a two-compartment pyramidal neuron. Its soma emits events at rate
    :math:`e_l = f(a_l)` (the feedforward activity; ``resmlp`` adds the skip,
    :math:`h_l = h_{l-1} + e_l`); its apical dendrite receives the burst rates
    :math:`b_{l+1} = p_{l+1} e_{l+1}` of the layer above through feedback weights
    :math:`Y_{l+1}` and a cancelling recurrent input :math:`Z_{l+1} e_{l+1}`:

    .. math::
        u_l = h(e_l)\odot\big(Y_{l+1} b_{l+1} - Z_{l+1} e_{l+1}\big),\qquad
        p_l = \sigma(\beta u_l + \alpha),\qquad b_l = p_l\,e_l .

    Without a teacher the recurrent weights cancel the feedback (:math:`Z = \bar p\,Y`, the
    state Payeur et al. train Z towards), so :math:`u_l = 0` and the burst probability is the
    baseline :math:`\bar p = \sigma(\alpha)` (``baseline_burst_probability``). With a teacher the
    apical input is the feedback of burst-rate *deviations*
    :math:`\delta b_{l+1} = (p_{l+1}-\bar p)\,e_{l+1}`; the skip of ``resmlp`` routes the apical
    input of layer l+1 also to layer l, :math:`A_l = Y_{l+1}\delta b_{l+1} + [\text{skip}]A_{l+1}`.
    The dendritic gain is :math:`h(e_l) = f'(a_l)/e_l` (for sigmoid units :math:`1 - e_l`, as
    in the paper), which makes the update below linear in :math:`f'(a_l) A_l` for weak apical
    input and bounded by the event rate when the burst probability saturates.
    At the output the teacher sets the burst deviation to the output error,
    :math:`\delta b_L = y - \mathrm{softmax}(z)`.

    Plasticity (burst-dependent, event-gated): :math:`\Delta W_l \propto (p_l - \bar p)\,e_l\,
    e_{l-1}^\top = \delta b_l\,h_{l-1}^\top`. Returned descent directions are
    :math:`-\frac{1}{B\,\sigma'(\alpha)\beta}\sum_b \delta b_{l,b} h_{l-1,b}^\top` (the factor
    puts the linear regime of the burst nonlinearity in gradient units); the readout gets
    :math:`-\frac1B\sum_b \delta b_L h_{L-1}^\top`, the cross-entropy gradient. Event rates are
    non-negative for rectifying/sigmoid units; for signed nonlinearities the magnitude
    :math:`|f(a)|` gates plasticity so that the teaching signal keeps its sign.

    Feedback: ``"symmetric"`` (default, :math:`Y_{l+1} = W_{l+1}^\top`: the state that the
    feedback-pathway plasticity of Payeur et al. drives Y towards) or ``"random"`` (fixed random
    :math:`Y`, feedback alignment, the variant of the paper's Extended Data on MNIST).
    """

    id = "burstprop"
    family = "dendritic"
    reference = "Payeur, Guerguiev, Zenke, Richards & Naud 2021, Nature Neuroscience"
    description = "Burstprop: apical feedback of burst rates modulates burst probability; plasticity from burst-probability deviations"
    supports = ("mlp", "resmlp")

    def __init__(self, beta: float = 1.0, baseline_burst_probability: float = 0.2,
                 feedback: str = "symmetric", min_event_rate: float = 1e-6):
        if feedback not in ("symmetric", "random"):
            raise ValueError("feedback must be 'symmetric' or 'random'")
        self.beta = float(beta)
        self.baseline_burst_probability = float(baseline_burst_probability)
        self.feedback = feedback
        self.min_event_rate = float(min_event_rate)

    def init_state(self, net, generator):
        if self.feedback != "random":
            return {}
        return {"feedback": [init_weight(net.m, w.shape[1], w.shape[2], "default", 1.0, generator).to(w)
                             for w in net.weights]}

    def step(self, net, state, x, y):
        x = net.broadcast_input(x)
        pre, post = net.forward(x)
        m, b, c = post[-1].shape
        yy = y.unsqueeze(0).expand(m, -1) if y.dim() == 1 else y
        p_bar = self.baseline_burst_probability
        alpha = math.log(p_bar / (1.0 - p_bar))
        gain = p_bar * (1.0 - p_bar) * self.beta  # sigma'(alpha) * beta
        fb = state.get("feedback", net.weights)
        n = net.n_layers
        dws, dbs = [None] * n, [None] * n
        burst_dev = torch.nn.functional.one_hot(yy, c).to(x.dtype) - torch.softmax(post[-1], -1)
        dws[n - 1] = -torch.bmm(burst_dev.transpose(1, 2), post[n - 1]) / b
        dbs[n - 1] = -burst_dev.mean(1)
        apical = None
        for layer in range(n - 2, -1, -1):
            down = torch.bmm(burst_dev, fb[layer + 1])  # Y_{l+1} (b - p_bar e) at h_{layer+1}
            apical = down + apical if (net.is_skip(layer + 1) and apical is not None) else down
            events = net.activation.f(pre[layer]).abs()
            # h(e) = f'(a) / e, so that (p - p_bar) e is linear in f'(a) * apical for small input
            u = net.activation.df(pre[layer]) * apical / events.clamp_min(self.min_event_rate)
            p = torch.sigmoid(self.beta * u + alpha)
            burst_dev = (p - p_bar) * events
            dws[layer] = -torch.bmm(burst_dev.transpose(1, 2), post[layer]) / (gain * b)
            dbs[layer] = -burst_dev.sum(1) / (gain * b)
        return RuleStep(weights=dws, biases=dbs, loss=per_example_ce(post[-1], y).mean(1))
