"""Difference target propagation (Lee et al. 2015; Meulemans et al. 2020)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from training_zoo.architectures import PopulationCNN
from training_zoo.dense import init_weight, per_example_ce
from training_zoo.rules.base import RuleStep, StochasticRule, Variant
from training_zoo.rules.node_perturbation import batch_size, child_generator, local_products, sample_then_step
from training_zoo.rules.registry import register

TARGET_LAYERS = ("output", "top_hidden")


@register
class DifferenceTargetPropagation(StochasticRule):
    r"""Difference target propagation with learned approximate inverses.

    Forward activities :math:`h_k` (``h_0`` the input, :math:`h_k = f(a_k)`, ``resmlp`` skip
    :math:`h_k = h_{k-1} + f(a_k)`), logits :math:`h_L = z = W_L h_{L-1} + b_L`; :math:`F_{k+1}`
    is the forward map of layer k+1 and :math:`g_k` its learned inverse (activity of layer k+1
    -> activity of layer k), for k = 1 .. L-1 (:math:`g_{L-1}` inverts the readout).

    Targets. ``target_layer="output"`` (default; Meulemans, Carzaniga, Suykens, Sacramento &
    Grewe 2020, the DTP of their framework and code): the target is set on the output,
    :math:`\hat h_L = h_L - \hat\eta\,\partial\ell/\partial h_L`, and every hidden layer's target
    is the difference-corrected propagation through the inverses,

    .. math::
        \hat h_{k} = h_{k} + g_{k}(\hat h_{k+1}) - g_{k}(h_{k+1}),\qquad k = L-1, \dots, 1,

    so even a one-hidden-layer network's update goes through a learned inverse and differs from
    the gradient. ``target_layer="top_hidden"`` (Lee, Zhang, Fischer & Bengio 2015): the top
    hidden layer gets the gradient target :math:`\hat h_{L-1} = h_{L-1} - \hat\eta\,
    \partial\ell/\partial h_{L-1}` and the propagation starts below it (with one hidden layer
    this is backprop exactly). :math:`\hat\eta` is ``target_step``; :math:`\ell` the summed
    per-example cross-entropy.

    Inverses: :math:`g_k(h) = f(V_k h + c_k)` (plain layer), :math:`g_k(h) = h + V_k h + c_k`
    (skip layer: the identity path carries the target difference down and the linear branch
    learns to undo :math:`f(a)`), or :math:`V_k h + c_k` (``linear_inverses``); on conv layers
    :math:`V_k h` is the transposed convolution with kernels :math:`V_k` of :math:`W_{k+1}`'s
    shape. Each is trained by its reconstruction loss (Lee et al.'s, also Meulemans et al.'s
    DTP): one normalised-LMS step of size ``feedback_lr / (1 + mean ||F_{k+1}||^2)`` per batch,
    before the targets are computed, on
    :math:`\tfrac12\lVert g_k(F_{k+1}(\tilde h_k)) - \tilde h_k\rVert^2`,
    :math:`\tilde h_k = h_k + \sigma\xi` (``noise``).

    Forward weights minimise the layer-local losses :math:`\tfrac12\lVert h_k - \hat h_k\rVert^2`
    with their input held fixed; the descent direction (scaled by :math:`1/(\hat\eta B)` so it
    is in gradient units) is

    .. math::
        \Delta W_k = \frac{1}{\hat\eta B}\sum_b \big[(h_k - \hat h_k)\odot f'(a_k)\big] h_{k-1}^\top,

    which for the readout is the cross-entropy gradient (its target is the output target in
    both forms).
    """

    id = "difference_target_propagation"
    family = "target_propagation"
    reference = ("Meulemans, Carzaniga, Suykens, Sacramento & Grewe 2020, NeurIPS 33; "
                 "Lee, Zhang, Fischer & Bengio 2015, ECML-PKDD")
    description = "Difference target propagation: learned inverses carry output targets down as layer targets, layer-local losses"
    supports = ("mlp", "resmlp", "cnn")
    variants = {
        "default": Variant("Target on the output, propagated through learned inverses of every layer with "
                           "the difference correction (Meulemans et al. 2020)."),
        "lee2015": Variant("Gradient target on the top hidden layer, inverses below it (Lee et al. 2015's "
                           "code).", {"target_layer": "top_hidden"}),
        "linear_inverses": Variant("Output target through linear inverses g(h) = V h + c (the linear "
                                   "feedback mappings of Meulemans et al.'s DDTP-linear).",
                                   {"linear_inverses": True}),
    }

    def __init__(self, target_step: float = 0.1, noise: float = 0.1, feedback_lr: float = 0.5,
                 feedback_init_scale: float = 1.0, target_layer: str = "output",
                 linear_inverses: bool = False):
        if target_layer not in TARGET_LAYERS:
            raise ValueError(f"target_layer must be one of {TARGET_LAYERS}, got {target_layer!r}")
        self.target_step = float(target_step)
        self.noise = float(noise)
        self.feedback_lr = float(feedback_lr)
        self.feedback_init_scale = float(feedback_init_scale)
        self.target_layer = target_layer
        self.linear_inverses = bool(linear_inverses)

    def inverted_layers(self, net) -> range:
        """The k with a trained inverse g_k (of weight layer k: activity k+1 -> activity k)."""
        top = net.n_layers - (1 if self.target_layer == "output" else 2)
        return range(1, top + 1)

    def init_state(self, net, generator):
        dtype, dev = net.weights[0].dtype, net.device
        v, c = [], []
        for k in range(1, net.n_layers):  # V_k has W_k's shape transposed (dense) / W_k's (conv)
            w = net.weights[k]
            if w.dim() == 5:
                fan_in = w.shape[1] * w.shape[3] * w.shape[4]
                vk = init_weight(net.m, w.shape[2], fan_in, "default", self.feedback_init_scale, generator)
                vk = vk.reshape(net.m, w.shape[2], w.shape[1], *w.shape[3:]).transpose(1, 2)
            else:
                vk = init_weight(net.m, w.shape[2], w.shape[1], "default", self.feedback_init_scale, generator)
            v.append(vk.contiguous().to(device=dev, dtype=dtype))
            c.append(torch.zeros(net.m, w.shape[2], device=dev, dtype=dtype))
        return {"generator": child_generator(generator, dev), "feedback_weights": v, "feedback_biases": c}

    def sample_noise(self, net, state, batch: int) -> list[torch.Tensor]:
        """Noise for hidden activities h_1 .. h_{L-1}, each in its layer's layout."""
        g, dtype = state["generator"], net.weights[0].dtype
        out = []
        for k in range(1, net.n_layers):
            if isinstance(net, PopulationCNN):
                h, w = net.spatial[k - 1]
                shape = (batch, net.m * net.channels[k - 1], h, w)
            else:
                shape = (net.m, batch, net.sizes[k])
            out.append(torch.randn(shape, generator=g, device=net.device, dtype=dtype) * self.noise)
        return out

    def inverse(self, net, state, k: int, h: torch.Tensor, v=None, c=None) -> torch.Tensor:
        """g_k: activity of layer k+1 -> activity of layer k (in the network's layouts)."""
        v = state["feedback_weights"][k - 1] if v is None else v
        c = state["feedback_biases"][k - 1] if c is None else c
        w = net.weights[k]
        if w.dim() == 5:  # conv -> conv: transposed grouped convolution with kernels V_k
            args = net.conv_args(k)
            m, co = v.shape[:2]
            h_in, w_in = net.spatial[k - 1]
            h_out = (h.shape[2] - 1) * args["stride"] - 2 * args["padding"] + v.shape[-2]
            w_out = (h.shape[3] - 1) * args["stride"] - 2 * args["padding"] + v.shape[-1]
            a = F.conv_transpose2d(h, v.reshape(m * co, *v.shape[2:]), c.reshape(-1), stride=args["stride"],
                                   padding=args["padding"], output_padding=(h_in - h_out, w_in - w_out),
                                   groups=args["groups"])
        else:
            a = torch.baddbmm(c.unsqueeze(1), h, v.transpose(1, 2))
            if isinstance(net, PopulationCNN):  # readout inverse: back to the last conv layout
                b = a.shape[1]
                a = a.transpose(0, 1).reshape(b, net.m * net.channels[-1], *net.spatial[-1])
        if self.linear_inverses:
            return a
        return h + a if net.is_skip(k) else net.activation.f(a)

    def train_inverses(self, net, state, post, noise) -> torch.Tensor:
        """One normalised-LMS step on every trained inverse's reconstruction loss; returns the
        (M,) mean loss."""
        total = torch.zeros(net.m, device=net.device, dtype=net.weights[0].dtype)
        for k in self.inverted_layers(net):
            h_noisy = post[k] + noise[k - 1]
            fwd = net.layer_post(k, net.layer_pre(k, h_noisy), h_noisy)
            v, c = state["feedback_weights"][k - 1], state["feedback_biases"][k - 1]
            if isinstance(net, PopulationCNN):  # transposed convs: gradient by autograd
                v, c = v.detach().requires_grad_(), c.detach().requires_grad_()
                with torch.enable_grad():
                    err = self.inverse(net, state, k, fwd, v, c) - h_noisy
                    per_net = 0.5 * unit_sq(net, err).mean(-1)  # (M,)
                    gv, gc = torch.autograd.grad(per_net.sum(), [v, c])
            else:  # dense: d = err * g'(a), dR/dV = d^T fwd / B
                a = torch.baddbmm(c.unsqueeze(1), fwd, v.transpose(1, 2))
                linear = self.linear_inverses or net.is_skip(k)
                err = (a + (fwd if net.is_skip(k) and not self.linear_inverses else 0) if linear
                       else net.activation.f(a)) - h_noisy
                per_net = 0.5 * unit_sq(net, err).mean(-1)
                d = err if linear else err * net.activation.df(a)
                gv, gc = torch.bmm(d.transpose(1, 2), fwd) / d.shape[1], d.mean(1)
            total = total + per_net.detach()
            # normalised LMS: the step is stable whatever the scale of the layer's activity
            lr = self.feedback_lr / (1.0 + unit_sq(net, fwd).mean(-1))
            state["feedback_weights"][k - 1] -= lr.view(-1, *([1] * (gv.dim() - 1))) * gv
            state["feedback_biases"][k - 1] -= lr.view(-1, 1) * gc
        return total

    def step(self, net, state, x, y):
        return sample_then_step(self, net, state, x, y)

    def step_with_noise(self, net, state, x, y, noise):
        x = net.broadcast_input(x)
        pre, post = net.forward(x)
        n = net.n_layers
        rec_loss = self.train_inverses(net, state, post, noise)
        top = n if self.target_layer == "output" else n - 1
        with torch.enable_grad():  # gradient of the summed per-example loss at the top target layer
            h_top = post[top].detach().requires_grad_()
            z = h_top if top == n else net.layer_pre(n - 1, h_top)
            (grad,) = torch.autograd.grad(per_example_ce(z, y).sum(), h_top)
        targets: list[torch.Tensor | None] = [None] * (n + 1)
        targets[top] = post[top] - self.target_step * grad
        for k in range(top - 1, 0, -1):
            targets[k] = post[k] + self.inverse(net, state, k, targets[k + 1]) - self.inverse(net, state, k, post[k + 1])
        if top == n - 1:  # Lee et al.: the readout's target is the output target as well
            targets[n] = post[n] - self.target_step * torch.autograd.functional.vjp(
                lambda zz: per_example_ce(zz, y).sum(), post[n])[1]
        # d/da of the local losses 1/2 ||h_k - target_k||^2 with the input held fixed (the skip
        # adds the fixed input, so its derivative is f'(a) as well), in gradient units
        scale = 1.0 / (self.target_step * batch_size(x))
        deltas = [(post[layer + 1] - targets[layer + 1]) * net.activation.df(pre[layer]) * scale
                  for layer in range(n - 1)]
        deltas.append((post[n] - targets[n]) * scale)
        dws, dbs = local_products(net, post[:n], deltas)
        return RuleStep(weights=dws, biases=dbs, loss=per_example_ce(post[-1], y).mean(1),
                        extras={"reconstruction_loss": rec_loss})


def unit_sq(net, t: torch.Tensor) -> torch.Tensor:
    """Squared norm over each example's units, (M, B), for dense (M, B, n) or conv (B, M*C, H, W)."""
    if t.dim() == 4:
        b = t.shape[0]
        return (t**2).reshape(b, net.m, -1).sum(-1).t()
    return (t**2).sum(-1)
