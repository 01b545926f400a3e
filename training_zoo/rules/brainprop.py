"""BrainProp: attention-gated reinforcement learning of a deep classifier (Q-values as outputs)."""

from __future__ import annotations

import torch

import math

from training_zoo.architectures import functional_forward
from training_zoo.rules.backprop import leaves
from training_zoo.rules.base import RuleStep, StochasticRule, Variant
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

    Computed, for every architecture (``cnn`` included), as autograd of
    :math:`-\frac1B\sum_b \delta_b\,Q_{b,a_b}` (RPE held fixed) through the network with the
    feedback weights in the backward pass, which is exactly the gated product above.
    Variants: ``boltzmann`` (every action drawn from the Boltzmann distribution, no greedy
    choice) and ``uniform_exploration`` (exploratory actions uniform over the classes,
    ``exploration="uniform"``). ``feedback="random"`` (fixed random feedback) is available but
    not a variant: it does not learn on digits in the zoo's training lengths.
    """

    id = "brainprop"
    family = "reinforcement"
    reference = "Pozzi, Bohte & Roelfsema 2020, NeurIPS (Attention-gated brain propagation)"
    description = "BrainProp: action selection, reward-prediction error, attention-gated feedback from the chosen output"
    supports = ("mlp", "resmlp", "cnn")
    variants = {
        "default": Variant("Symmetric feedback (kept equal to the forward weights by the same local rule), "
                           "epsilon-greedy action selection with Boltzmann exploration."),
        "boltzmann": Variant("Every action drawn from the Boltzmann distribution softmax(Q/T).",
                             {"epsilon": 1.0}),
        "uniform_exploration": Variant("Textbook epsilon-greedy: exploratory actions drawn uniformly.",
                                       {"exploration": "uniform"}),
    }

    def __init__(self, epsilon: float = 0.05, temperature: float = 1.0, feedback: str = "symmetric",
                 exploration: str = "boltzmann"):
        if feedback not in ("symmetric", "random"):
            raise ValueError("feedback must be 'symmetric' or 'random'")
        if exploration not in ("boltzmann", "uniform"):
            raise ValueError(f"exploration must be 'boltzmann' or 'uniform', got {exploration!r}")
        self.exploration = exploration
        self.epsilon = float(epsilon)
        self.temperature = float(temperature)
        self.feedback = feedback

    def init_state(self, net, generator):
        state = {"generator": child_generator(generator, net.device)}
        if self.feedback == "random":
            from training_zoo.dense import init_weight

            state["feedback"] = [
                init_weight(net.m, w.shape[1], math.prod(w.shape[2:]), "default", 1.0, generator)
                .reshape(w.shape).to(w)
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
    def select_actions(q: torch.Tensor, noise, epsilon: float, temperature: float,
                       exploration: str = "boltzmann") -> torch.Tensor:
        u_explore, u_draw = noise
        greedy = q.argmax(-1)
        if exploration == "uniform":
            drawn = (u_draw * q.shape[-1]).long().clamp(max=q.shape[-1] - 1)
            return torch.where(u_explore < epsilon, drawn, greedy)
        cdf = torch.softmax(q / temperature, dim=-1).cumsum(-1)
        drawn = (cdf < u_draw.unsqueeze(-1)).sum(-1).clamp(max=q.shape[-1] - 1)
        return torch.where(u_explore < epsilon, drawn, greedy)

    def step(self, net, state, x, y):
        return self.step_with_noise(net, state, x, y, self.sample_noise(net, state, x.shape[0]))

    def step_with_noise(self, net, state, x, y, noise):
        ws, bs = leaves(net)
        feedback = state.get("feedback")
        with torch.enable_grad():
            _, post = functional_forward(net, x, ws, bs, feedback)
            q = post[-1]
            m, b, c = q.shape
            yy = y.unsqueeze(0).expand(m, -1) if y.dim() == 1 else y
            action = self.select_actions(q.detach(), noise, self.epsilon, self.temperature, self.exploration)
            tag = torch.nn.functional.one_hot(action, c).to(q.dtype)  # attention on the chosen unit
            reward = (action == yy).to(q.dtype)
            q_a = (q * tag).sum(-1)
            rpe = reward - q_a.detach()  # (M, B)
            grads = torch.autograd.grad(-(rpe * q_a).sum() / b, [*ws, *bs])
        n = net.n_layers
        loss = per_example_ce(q.detach(), y).mean(1)
        return RuleStep(weights=list(grads[:n]), biases=list(grads[n:]), loss=loss,
                        extras={"reward": reward.mean(1)})
