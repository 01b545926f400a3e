"""BrainProp: attention-gated reinforcement learning of a deep classifier (Q-values as outputs)."""

from __future__ import annotations

import torch

from training_zoo.rules.base import RuleStep, StochasticRule
from training_zoo.dense import per_example_ce
from training_zoo.rules.node_perturbation import child_generator
from training_zoo.rules.registry import register


@register
class BrainProp(StochasticRule):
    r"""Attention-gated brain propagation (Pozzi, Bohte & Roelfsema 2020; after AGREL/AuGMEnT).

    The logits are action values :math:`Q = z`. Per example one action is selected: the greedy
    winner :math:`\arg\max_c Q_c` with probability :math:`1-\varepsilon`, otherwise a draw from
    the Boltzmann distribution :math:`\mathrm{softmax}(Q/T)`. The environment rewards
    :math:`r = 1` for the correct class and 0 otherwise; the global neuromodulatory signal is the
    reward-prediction error :math:`\delta = r - Q_a`.

    Only the selected output unit sends attentional feedback, :math:`g_L = e_a`, down through
    feedback weights :math:`B_l` (``feedback="symmetric"``: :math:`B_l = W_l^\top`, which the
    paper keeps by updating feedback synapses with the same local rule; ``"random"``: fixed
    random), gated by the local derivative:

    .. math::
        G_{l-1} = B_l\,g_l + [\text{skip}_{l-1}]\,G_l,\qquad g_l = f'(a_l)\odot G_l
        \quad(l < L),

    where :math:`G_k` is the feedback arriving at the activity :math:`h_k` (the identity skip of
    ``resmlp``, :math:`h_k = h_{k-1} + f(a_k)`, passes it on unchanged). Plasticity is the
    three-factor product of the RPE, the attentional tag and presynaptic activity:

    .. math::
        \Delta W_l = -\frac{1}{B}\sum_b \delta_b\, g_{l,b}\, h_{l-1,b}^\top,\qquad
        \Delta b_l = -\frac{1}{B}\sum_b \delta_b\, g_{l,b}

    (descent directions). With symmetric feedback the expected update is the gradient of
    :math:`\tfrac12\,\mathbb E_a[(r-Q_a)^2]`. Test accuracy is the argmax of Q (the logits).
    """

    id = "brainprop"
    family = "reinforcement"
    reference = "Pozzi, Bohte & Roelfsema 2020, NeurIPS (Attention-gated brain propagation)"
    description = "BrainProp: action selection, reward-prediction error, attention-gated feedback from the chosen output"
    supports = ("mlp", "resmlp")

    def __init__(self, epsilon: float = 0.05, temperature: float = 1.0, feedback: str = "symmetric"):
        if feedback not in ("symmetric", "random"):
            raise ValueError("feedback must be 'symmetric' or 'random'")
        self.epsilon = float(epsilon)
        self.temperature = float(temperature)
        self.feedback = feedback

    def init_state(self, net, generator):
        state = {"generator": child_generator(generator, net.device)}
        if self.feedback == "random":
            from training_zoo.dense import init_weight

            state["feedback"] = [
                init_weight(net.m, w.shape[1], w.shape[2], "default", 1.0, generator).to(w)
                for w in net.weights
            ]
        return state

    def sample_noise(self, net, state, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Two uniforms per example: explore-or-not and the Boltzmann draw (inverse CDF)."""
        g = state["generator"]
        dtype = net.weights[0].dtype
        u = torch.rand(2, net.m, batch, generator=g, device=net.device, dtype=dtype)
        return u[0], u[1]

    @staticmethod
    def select_actions(q: torch.Tensor, noise, epsilon: float, temperature: float) -> torch.Tensor:
        u_explore, u_draw = noise
        greedy = q.argmax(-1)
        cdf = torch.softmax(q / temperature, dim=-1).cumsum(-1)
        drawn = (cdf < u_draw.unsqueeze(-1)).sum(-1).clamp(max=q.shape[-1] - 1)
        return torch.where(u_explore < epsilon, drawn, greedy)

    def step_with_noise(self, net, state, x, y, noise):
        x = net.broadcast_input(x)
        pre, post = net.forward(x)
        q = post[-1]
        m, b, c = q.shape
        yy = y.unsqueeze(0).expand(m, -1) if y.dim() == 1 else y
        action = self.select_actions(q.detach(), noise, self.epsilon, self.temperature)
        tag = torch.nn.functional.one_hot(action, c).to(q.dtype)  # attention on the chosen unit
        reward = (action == yy).to(q.dtype)
        rpe = reward - (q * tag).sum(-1)  # (M, B)
        fb = state.get("feedback", net.weights)
        g = tag
        dws, dbs = [None] * net.n_layers, [None] * net.n_layers
        arriving = None  # feedback arriving at h_l
        for layer in range(net.n_layers - 1, -1, -1):
            if layer < net.n_layers - 1:
                g = net.activation.df(pre[layer]) * arriving
            e = g * (-rpe / b).unsqueeze(-1)
            dws[layer] = torch.bmm(e.transpose(1, 2), post[layer])
            dbs[layer] = e.sum(1)
            if layer > 0:
                down = torch.bmm(g, fb[layer])
                arriving = down + arriving if net.is_skip(layer) else down
        loss = per_example_ce(q, y).mean(1)
        return RuleStep(weights=dws, biases=dbs, loss=loss, extras={"reward": reward.mean(1)})
