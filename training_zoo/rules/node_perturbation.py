"""Node perturbation: a reinforcement (zeroth-order) estimate of the gradient from loss changes.

Every pre-activation is jittered with Gaussian noise, the per-example loss of the noisy pass is
compared with the clean pass, and the loss difference acts as a global third factor on a
noise-times-presynaptic-activity eligibility trace.
"""

from __future__ import annotations

import torch

from training_zoo.dense import per_example_ce
from training_zoo.rules.base import RuleStep, StochasticRule
from training_zoo.rules.registry import register


def child_generator(generator: torch.Generator, device) -> torch.Generator:
    """A fresh generator on ``device`` seeded from ``generator`` (deterministic for a seed)."""
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
    g = torch.Generator(device=torch.device(device))
    g.manual_seed(seed)
    return g


@register
class NodePerturbation(StochasticRule):
    r"""Node perturbation (weight-update form of REINFORCE with a clean-pass baseline).

    For each example and each of K perturbation draws, pre-activations get noise
    :math:`\xi_l \sim \mathcal N(0, \sigma^2 I)`; the noisy pass gives per-example loss
    :math:`\tilde\ell` and presynaptic activities :math:`\tilde h_{l-1}`, the clean pass gives
    :math:`\ell`. With :math:`K_l` the draws that perturb layer l, the descent direction is

    .. math::
        \Delta W_l = \frac{1}{BK_l}\sum_{b,k} \frac{\tilde\ell_{bk}-\ell_b}{\sigma^2}\,
        \xi_{l,bk}\,\tilde h_{l-1,bk}^\top,\qquad
        \Delta b_l = \frac{1}{BK_l}\sum_{b,k} \frac{\tilde\ell_{bk}-\ell_b}{\sigma^2}\,\xi_{l,bk},

    an unbiased estimate (to first order in :math:`\sigma`) of :math:`\partial L/\partial W_l`,
    since :math:`\mathbb E[(\tilde\ell-\ell)\xi] \approx \sigma^2\,\partial\ell/\partial a`.
    ``layerwise=True`` (default): each draw perturbs a single layer, ``samples`` draws per layer
    (:math:`K = L\cdot` ``samples``, :math:`K_l =` ``samples``), which removes the variance that
    the other layers' noise adds to a layer's estimate; ``layerwise=False``: every draw perturbs
    all layers (:math:`K = K_l =` ``samples``). The residual skip of ``resmlp`` needs no special
    handling: the noise enters the branch pre-activation and its effect on the loss is measured
    through the whole network. The loss is the cross-entropy of the logits.
    """

    id = "node_perturbation"
    family = "reinforcement"
    reference = "Williams 1992; Fiete & Seung 2006; Werfel, Xie & Seung 2005"
    description = "Node perturbation: noise on pre-activations, loss change as global reward signal"
    supports = ("mlp", "resmlp")

    def __init__(self, sigma: float = 0.1, samples: int = 4, layerwise: bool = True):
        self.sigma = float(sigma)
        self.samples = int(samples)
        self.layerwise = bool(layerwise)

    def draws(self, net) -> int:
        """Perturbation draws per example: ``samples``, or ``samples`` per layer if layerwise."""
        return self.samples * (net.n_layers if self.layerwise else 1)

    def draw_counts(self, net) -> list[int]:
        """How many draws perturb each layer."""
        return [self.samples if self.layerwise else self.draws(net)] * net.n_layers

    def init_state(self, net, generator):
        return {"generator": child_generator(generator, net.device)}

    def sample_noise(self, net, state, batch: int) -> list[torch.Tensor]:
        """Noise per layer, shape (M, K*B, n_l): K perturbation draws stacked along the batch."""
        g = state["generator"]
        dtype = net.weights[0].dtype
        k = self.draws(net)
        noise = []
        for layer, w in enumerate(net.weights):
            xi = torch.randn(net.m, k * batch, w.shape[1], generator=g, device=net.device, dtype=dtype)
            if self.layerwise:  # draw d perturbs layer d // samples only
                on = (torch.arange(k, device=net.device) // self.samples == layer).repeat_interleave(batch)
                xi = xi * on.to(dtype).view(1, -1, 1)
            noise.append(xi * self.sigma)
        return noise

    def step_with_noise(self, net, state, x, y, noise):
        x = net.broadcast_input(x)
        m, b, _ = x.shape
        k = self.draws(net)
        _, post = net.forward(x)
        clean = per_example_ce(post[-1], y)  # (M, B)
        yk = y.repeat(k) if y.dim() == 1 else y.repeat(1, k)
        h = x.repeat(1, k, 1)  # (M, K*B, n0): draw-major stacking
        inputs = []
        for layer in range(net.n_layers):
            inputs.append(h)
            a = net.layer_pre(layer, h) + noise[layer]
            h = net.layer_post(layer, a, h)
        noisy = per_example_ce(h, yk)  # (M, K*B)
        coef = (noisy - clean.repeat(1, k)) / (self.sigma**2 * b)
        dws, dbs = [], []
        for layer, count in enumerate(self.draw_counts(net)):
            e = noise[layer] * (coef / count).unsqueeze(-1)
            dws.append(torch.bmm(e.transpose(1, 2), inputs[layer]))
            dbs.append(e.sum(1))
        return RuleStep(weights=dws, biases=dbs, loss=clean.mean(1))
