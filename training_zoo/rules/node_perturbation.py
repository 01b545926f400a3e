"""Node perturbation: a reinforcement (zeroth-order) estimate of the gradient from loss changes.

Every pre-activation is jittered with Gaussian noise, the per-example loss of the noisy pass is
compared with the clean pass, and the loss difference acts as a global third factor on a
noise-times-presynaptic-activity eligibility trace.
"""

from __future__ import annotations

import torch

from training_zoo.architectures import PopulationCNN, layer_pre_with
from training_zoo.dense import per_example_ce
from training_zoo.rules.backprop import leaves
from training_zoo.rules.base import RuleStep, StochasticRule, Variant
from training_zoo.rules.registry import register


def child_generator(generator: torch.Generator, device) -> torch.Generator:
    """A fresh generator on ``device`` seeded from ``generator`` (deterministic for a seed)."""
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
    g = torch.Generator(device=torch.device(device))
    g.manual_seed(seed)
    return g


def batch_size(x: torch.Tensor) -> int:
    """Examples in a broadcast input: (M, B, n) dense or (B, C, H, W) conv."""
    return x.shape[0] if x.dim() == 4 else x.shape[1]


def sample_then_step(rule, net, state, x, y):
    """StochasticRule.step for every layout (the batch is dim 0 of a conv input, 1 of a dense one)."""
    x = net.broadcast_input(x)
    return rule.step_with_noise(net, state, x, y, rule.sample_noise(net, state, batch_size(x)))


def pre_shape(net, layer: int, n: int) -> tuple[int, ...]:
    """Shape of layer ``layer``'s pre-activation for ``n`` examples in the population layout:
    (M, n, units) for dense layers, (n, M * C, H, W) for conv layers."""
    if isinstance(net, PopulationCNN) and layer < net.n_conv:
        h, w = net.spatial[layer]
        return (n, net.m * net.channels[layer], h, w)
    return (net.m, n, net.weights[layer].shape[1])


def per_example(coef: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A per-network, per-example coefficient (M, n) shaped to multiply ``like`` (a layer's
    tensor in the population layout; see :func:`pre_shape`)."""
    if like.dim() == 4:
        m = coef.shape[0]
        return coef.t().repeat_interleave(like.shape[1] // m, dim=1).view(like.shape[0], like.shape[1], 1, 1)
    return coef.unsqueeze(-1)


def local_products(net, inputs, deltas):
    """Sum over examples of delta_l (x) input_l for every layer: one batched product for dense
    layers, and for conv layers (or a readout fed by one) autograd of
    sum_l <a_l(inputs_l), delta_l> with the inputs held fixed (the conv weight gradient)."""
    dws = [torch.zeros_like(w) for w in net.weights]
    dbs = [torch.zeros_like(b) for b in net.biases]
    conv = []
    for layer, d in enumerate(deltas):
        h = inputs[layer]
        if d is not None and d.dim() == 3 and h.dim() == 3:
            dws[layer] = torch.bmm(d.transpose(1, 2), h.expand(d.shape[0], -1, -1))
            dbs[layer] = d.sum(1)
        elif d is not None:
            conv.append(layer)
    if conv:
        ws, bs = leaves(net)
        with torch.enable_grad():
            surrogate = sum((layer_pre_with(net, layer, inputs[layer].detach(), ws[layer], bs[layer])
                             * deltas[layer]).sum() for layer in conv)
            grads = torch.autograd.grad(surrogate, [ws[layer] for layer in conv] + [bs[layer] for layer in conv])
        for i, layer in enumerate(conv):
            dws[layer], dbs[layer] = grads[i], grads[len(conv) + i]
    return dws, dbs


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

    Default (canonical node perturbation, Williams 1992; Werfel, Xie & Seung 2005; Fiete &
    Seung 2006): one noisy pass per example (``samples=1``) that perturbs every layer at once
    (``layerwise=False``, :math:`K = K_l = 1`) with small noise (``sigma=0.01``), so each
    layer's estimate carries the variance that all the other units' noise adds.
    ``layerwise=True``: each draw perturbs a single layer, ``samples`` draws per layer
    (:math:`K = L\cdot` ``samples``, :math:`K_l =` ``samples``), a variance-reduced form.
    The residual skip of ``resmlp`` needs no special handling: the noise enters the branch
    pre-activation and its effect on the loss is measured through the whole network; on conv
    layers every channel and position is a node with its own noise, and the product above is
    the conv weight gradient. The loss is the cross-entropy of the logits.
    """

    id = "node_perturbation"
    family = "reinforcement"
    reference = "Williams 1992; Fiete & Seung 2006; Werfel, Xie & Seung 2005"
    description = "Node perturbation: noise on pre-activations, loss change as global reward signal"
    supports = ("mlp", "resmlp", "cnn")
    variants = {
        "default": Variant("Canonical: every layer perturbed at once, one noisy pass per example, "
                           "sigma 0.01 (Werfel et al. 2005; Fiete & Seung 2006)."),
        "layerwise": Variant("Variance-reduced: each draw perturbs one layer, 4 draws per layer, sigma 0.1 "
                             "(layer-wise perturbation as in Lillicrap et al. 2020's comparisons).",
                             {"layerwise": True, "samples": 4, "sigma": 0.1}),
        "multi_sample": Variant("All layers at once, averaged over 8 noisy passes per example, sigma 0.05 "
                                "(code that averages several perturbations per update).",
                                {"samples": 8, "sigma": 0.05}),
    }

    def __init__(self, sigma: float = 0.01, samples: int = 1, layerwise: bool = False):
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
        """Noise per layer in :func:`pre_shape`'s layout for K*B examples (K draws stacked
        draw-major along the examples)."""
        g = state["generator"]
        dtype = net.weights[0].dtype
        k = self.draws(net)
        noise = []
        for layer in range(net.n_layers):
            xi = torch.randn(pre_shape(net, layer, k * batch), generator=g, device=net.device, dtype=dtype)
            if self.layerwise:  # draw d perturbs layer d // samples only
                on = (torch.arange(k, device=net.device) // self.samples == layer).repeat_interleave(batch)
                xi = xi * per_example(on.to(dtype).expand(net.m, -1), xi)
            noise.append(xi * self.sigma)
        return noise

    def step(self, net, state, x, y):
        return sample_then_step(self, net, state, x, y)

    def step_with_noise(self, net, state, x, y, noise):
        x = net.broadcast_input(x)
        conv = x.dim() == 4
        b = batch_size(x)
        k = self.draws(net)
        _, post = net.forward(x)
        clean = per_example_ce(post[-1], y)  # (M, B)
        yk = y.repeat(k) if y.dim() == 1 else y.repeat(1, k)
        h = x.repeat(k, 1, 1, 1) if conv else x.repeat(1, k, 1)  # K*B examples, draw-major
        inputs = []
        for layer in range(net.n_layers):
            inputs.append(h)
            a = net.layer_pre(layer, h) + noise[layer]
            h = net.layer_post(layer, a, h)
        noisy = per_example_ce(h, yk)  # (M, K*B)
        coef = (noisy - clean.repeat(1, k)) / (self.sigma**2 * b)
        deltas = [xi * per_example(coef / count, xi) for xi, count in zip(noise, self.draw_counts(net))]
        dws, dbs = local_products(net, inputs, deltas)
        return RuleStep(weights=dws, biases=dbs, loss=clean.mean(1))
