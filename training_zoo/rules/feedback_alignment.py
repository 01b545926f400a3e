"""The feedback-alignment family: backprop's error pathway with weights other than W^T.

Notation (every network of the population alike; B_l has W_l's shape (n_out, n_in), so the
backward pass computes dL/dh_{l-1} = B_l^T delta_l where backprop uses W_l^T):

    a_l = W_l h_{l-1} + b_l,   h_l = f(a_l),   e = dL/dz = (softmax(z) - onehot(y)) / B
    delta_L = e,   delta_l = (B_{l+1}^T delta_{l+1}) * f'(a_l)
    direction: dW_l = delta_l h_{l-1}^T,   db_l = sum_batch delta_l

The rules differ in what B is and how it changes. B_1 (to the input) is never needed. On conv
layers the same holds with convolution in place of the product (see
:mod:`training_zoo.architectures`). The rules' own updates of B use plain SGD with the rule's
``feedback_lr``: B is rule state, not a parameter handed to the optimizer.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from training_zoo.architectures import PopulationCNN, functional_forward, layer_pre_with, unit_view
from training_zoo.dense import cross_entropy_per_network, init_weight, output_error
from training_zoo.rules.backprop import feedback_gradients, leaves
from training_zoo.rules.base import LearningRule, RuleStep
from training_zoo.rules.registry import register


def random_feedback(net, generator: torch.Generator, scale: float = 1.0) -> list[torch.Tensor | None]:
    """Fixed random B_l with W_l's shape, U(-s/sqrt(fan_in), s/sqrt(fan_in)); None for layer 0."""
    out: list[torch.Tensor | None] = [None]
    for w in net.weights[1:]:
        fan_in = int(math.prod(w.shape[2:]))
        b = init_weight(net.m, w.shape[1], fan_in, "default", scale, generator).reshape(w.shape)
        out.append(b.to(device=w.device, dtype=w.dtype))
    return out


@register
class FeedbackAlignment(LearningRule):
    """Feedback alignment (Lillicrap et al. 2016): B_l fixed and random.

        delta_l = (B_{l+1}^T delta_{l+1}) * f'(a_l),   B ~ U(-s/sqrt(n_in), s/sqrt(n_in)) fixed.

    The forward weights come to align with B^T during learning (angle below 90 degrees).
    """

    id = "feedback_alignment"
    family = "feedback_alignment"
    reference = "Lillicrap, Cownden, Tweed & Akerman 2016, Nat. Commun. 7:13276"
    description = "Backprop's error pathway through fixed random feedback weights."
    supports = ("mlp", "resmlp", "cnn")

    def __init__(self, feedback_scale: float = 1.0):
        self.feedback_scale = float(feedback_scale)

    def init_state(self, net, generator):
        return {"B": random_feedback(net, generator, self.feedback_scale)}

    def step(self, net, state, x, y) -> RuleStep:
        loss, gw, gb = feedback_gradients(net, x, y, state["B"])
        return RuleStep(weights=gw, biases=gb, loss=loss)


@register
class SignSymmetry(LearningRule):
    """Sign symmetry (Liao, Leibo & Poggio 2016; Xiao et al. 2018): feedback shares only the
    signs of the forward weights,

        B_l = sign(W_l) * mean|W_l|        (per network and layer; the magnitude is one number)

    so the backward pass is delta_l = (B_{l+1}^T delta_{l+1}) * f'(a_l). The common magnitude
    keeps the backward signal on W's scale; it does not change the sign pattern.
    """

    id = "sign_symmetry"
    family = "feedback_alignment"
    reference = "Liao, Leibo & Poggio 2016, AAAI; Xiao, Chen, Liao & Poggio 2018, arXiv:1811.03567"
    description = "Feedback weights with the signs of the forward weights and a common magnitude."
    supports = ("mlp", "resmlp", "cnn")

    @staticmethod
    def feedback(net) -> list[torch.Tensor | None]:
        out: list[torch.Tensor | None] = [None]
        for w in net.weights[1:]:
            mag = w.abs().reshape(w.shape[0], -1).mean(1).view(-1, *([1] * (w.dim() - 1)))
            out.append(torch.sign(w) * mag)
        return out

    def step(self, net, state, x, y) -> RuleStep:
        loss, gw, gb = feedback_gradients(net, x, y, self.feedback(net))
        return RuleStep(weights=gw, biases=gb, loss=loss)


@register
class DirectFeedbackAlignment(LearningRule):
    """Direct feedback alignment (Nokland 2016): the output error reaches every hidden layer
    directly through a fixed random matrix D_l (n_classes x units of layer l):

        delta_L = e,   delta_l = (e D_l) * f'(a_l)   (l < L),
        dW_l = delta_l h_{l-1}^T,  db_l = sum_batch delta_l.
    """

    id = "direct_feedback_alignment"
    family = "feedback_alignment"
    reference = "Nokland 2016, NeurIPS 29"
    description = "Output error projected to every hidden layer by fixed random matrices."
    supports = ("mlp", "resmlp", "cnn")

    def __init__(self, feedback_scale: float = 1.0):
        self.feedback_scale = float(feedback_scale)

    def init_state(self, net, generator):
        n_classes = net.weights[-1].shape[1]
        ds = []
        for units in net.sizes[1:-1]:
            d = init_weight(net.m, n_classes, units, "default", 1.0, generator)
            # U(-1/sqrt(units)) would make the projected error vanish with width; scale it to
            # the output layer's fan-in instead so each hidden unit gets an O(|e|) signal.
            d = d * math.sqrt(units / n_classes) * self.feedback_scale
            ds.append(d.to(device=net.device, dtype=net.weights[0].dtype))
        return {"D": ds}

    def step(self, net, state, x, y) -> RuleStep:
        ws, bs = leaves(net)
        with torch.enable_grad():
            pre, post = functional_forward(net, x, ws, bs, detach_inputs=True)
            logits = post[-1]
            loss = cross_entropy_per_network(logits.detach(), y)
            e = output_error(logits.detach(), y)
            surrogate = (pre[-1] * e).sum()
            for layer, d in enumerate(state["D"]):
                a = pre[layer]
                proj = torch.bmm(e, d)  # (M, B, units)
                if a.dim() == 4:  # conv layer: (B, M*C, H, W)
                    proj = proj.transpose(0, 1).reshape(a.shape)
                delta = proj * net.activation.df(a.detach())
                surrogate = surrogate + (a * delta).sum()
            grads = torch.autograd.grad(surrogate, [*ws, *bs])
        n = len(ws)
        return RuleStep(weights=list(grads[:n]), biases=list(grads[n:]), loss=loss)


@register
class KolenPollack(LearningRule):
    """Kolen-Pollack (Kolen & Pollack 1994; Akrout et al. 2019): B receives the same learning
    signal as W, and both decay, so their difference decays away:

        dW_l = delta_l h_{l-1}^T + lambda W_l                     (direction to the optimizer)
        B_l <- B_l - eta_B (delta_l h_{l-1}^T + lambda B_l)         (inside the step)

    With SGD at learning rate eta_B, W_t - B_t = (1 - eta_B lambda)^t (W_0 - B_0) -> 0.
    delta uses B as in feedback alignment.
    """

    id = "kolen_pollack"
    family = "feedback_alignment"
    reference = "Akrout, Wilson, Humphreys, Lillicrap & Tweed 2019, NeurIPS 32"
    description = "Feedback weights get the forward weights' updates; weight decay aligns them."
    supports = ("mlp", "resmlp", "cnn")

    def __init__(self, feedback_lr: float = 0.05, weight_decay: float = 1e-3):
        self.feedback_lr = float(feedback_lr)
        self.weight_decay = float(weight_decay)

    def init_state(self, net, generator):
        return {"B": random_feedback(net, generator)}

    def step(self, net, state, x, y) -> RuleStep:
        loss, gw, gb = feedback_gradients(net, x, y, state["B"])
        lam = self.weight_decay
        with torch.no_grad():
            for layer, b in enumerate(state["B"]):
                if b is not None:
                    b.sub_(self.feedback_lr * (gw[layer] + lam * b))
        weights = [g + lam * w for g, w in zip(gw, net.weights)]
        return RuleStep(weights=weights, biases=gb, loss=loss)


def _layer_input_noise(net, layer: int, n: int, sigma: float, generator: torch.Generator) -> torch.Tensor:
    """Gaussian noise shaped like layer ``layer``'s input for the M networks."""
    w = net.weights[layer]
    if isinstance(net, PopulationCNN) and layer < net.n_conv:
        h, wd = net.spatial[layer - 1]
        shape = (n, net.m * w.shape[2], h, wd)
    else:
        shape = (net.m, n, w.shape[-1])
    return (torch.randn(shape, generator=generator) * sigma).to(device=w.device, dtype=w.dtype)


def _backward_map(net, layer: int, r: torch.Tensor, b: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """B^T r: the feedback pathway from layer ``layer``'s output to its input (shape of ``like``)."""
    if like.dim() == 4:
        args = net.conv_args(layer)
        m, co = b.shape[:2]
        flat = b.reshape(m * co, *b.shape[2:])
        h_out = (r.shape[2] - 1) * args["stride"] - 2 * args["padding"] + b.shape[-2]
        w_out = (r.shape[3] - 1) * args["stride"] - 2 * args["padding"] + b.shape[-1]
        pad = (like.shape[2] - h_out, like.shape[3] - w_out)
        return F.conv_transpose2d(r, flat, stride=args["stride"], padding=args["padding"],
                                  output_padding=pad, groups=args["groups"])
    return torch.bmm(r, b)


def alignment_update(net, state, generator, sigma, n, amp, decay, null) -> None:
    """In place: B_l <- B_l - eta_B * dR/dB_l for the layer-wise regulariser (noise x ~ N(0, sigma^2),
    r = W_l x, batch of ``n``):

        R = amp * P_amp + decay * P_decay + null * P_null
        P_amp = -<r, B_l x> / n,   P_decay = 1/2 ||B_l||^2,   P_null = 1/2 ||B_l^T r||^2 / n

    (Kunin et al. 2020's primitives, written with B in W's orientation.) In expectation
    -dP_amp/dB = sigma^2 W, so amp and decay alone (weight mirror) have the fixed point
    B = (amp sigma^2 / decay) W.
    """
    eta = state["feedback_lr"]
    for layer in range(1, net.n_layers):
        b = state["B"][layer]
        x = _layer_input_noise(net, layer, n, sigma, generator)
        w = net.weights[layer]
        with torch.enable_grad():
            bl = b.detach().requires_grad_()
            zero = torch.zeros_like(net.biases[layer])
            r = layer_pre_with(net, layer, x, w, zero).detach()
            reg = -amp * (r * layer_pre_with(net, layer, x, bl, zero)).sum() / n
            reg = reg + decay * 0.5 * (bl**2).sum()
            if null:
                reg = reg + null * 0.5 * (_backward_map(net, layer, r, bl, x) ** 2).sum() / n
            (g,) = torch.autograd.grad(reg, bl)
        with torch.no_grad():
            b.sub_(eta * g)


@register
class WeightMirror(LearningRule):
    """Weight mirror (Akrout et al. 2019): in a mirror phase each layer's input is driven by
    noise x ~ N(0, sigma^2 I), the layer responds r = W_l x, and B learns Hebbian-ly with decay:

        B_l <- B_l + eta_B (r x^T / n - lambda B_l)        E[r x^T / n] = sigma^2 W_l

    so B_l -> (sigma^2 / lambda) W_l (= W_l with the defaults). The learning phase is feedback
    alignment through B (delta_l = (B_{l+1}^T delta_{l+1}) * f'(a_l)). One mirror step per
    learning step, before it.
    """

    id = "weight_mirror"
    family = "feedback_alignment"
    reference = "Akrout, Wilson, Humphreys, Lillicrap & Tweed 2019, NeurIPS 32"
    description = "Feedback weights learn the forward weights from noise-driven Hebbian activity."
    supports = ("mlp", "resmlp", "cnn")

    def __init__(self, feedback_lr: float = 0.05, sigma: float = 1.0, decay: float = 1.0,
                 mirror_batch: int = 32):
        self.feedback_lr = float(feedback_lr)
        self.sigma = float(sigma)
        self.decay = float(decay)
        self.mirror_batch = int(mirror_batch)

    def init_state(self, net, generator):
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        return {"B": random_feedback(net, generator), "feedback_lr": self.feedback_lr,
                "noise": torch.Generator().manual_seed(seed)}

    def step(self, net, state, x, y) -> RuleStep:
        alignment_update(net, state, state["noise"], self.sigma, self.mirror_batch,
                         amp=1.0, decay=self.decay, null=0.0)
        loss, gw, gb = feedback_gradients(net, x, y, state["B"])
        return RuleStep(weights=gw, biases=gb, loss=loss)


@register
class InformationAlignment(LearningRule):
    """Information alignment (Kunin, Nayebi, Sagastuy-Brena et al. 2020): B_l follows the local
    layer-wise regulariser R = alpha P_amp + beta P_decay + gamma P_null (noise-driven input x,
    r = W_l x):

        P_amp  = -<r, B_l x> / n        (Hebbian: pulls B towards W)
        P_decay = 1/2 ||B_l||^2          (keeps B bounded)
        P_null = 1/2 ||B_l^T r||^2 / n   (penalises feedback of the layer's own activity; stabilises)
        B_l <- B_l - eta_B dR/dB_l

    Expected fixed point: B = alpha sigma^2 (beta I + gamma sigma^2 W W^T)^(-1) W. Learning
    uses B as in feedback alignment.
    """

    id = "information_alignment"
    family = "feedback_alignment"
    reference = "Kunin, Nayebi, Sagastuy-Brena, Ganguli, Bloom & Yamins 2020, ICML"
    description = "Feedback weights learn by local amp, decay and null regularisation primitives."
    supports = ("mlp", "resmlp", "cnn")

    def __init__(self, feedback_lr: float = 0.05, sigma: float = 1.0, alpha: float = 1.0,
                 beta: float = 1.0, gamma: float = 0.1, mirror_batch: int = 32):
        self.feedback_lr = float(feedback_lr)
        self.sigma = float(sigma)
        self.alpha, self.beta, self.gamma = float(alpha), float(beta), float(gamma)
        self.mirror_batch = int(mirror_batch)

    def init_state(self, net, generator):
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        return {"B": random_feedback(net, generator), "feedback_lr": self.feedback_lr,
                "noise": torch.Generator().manual_seed(seed)}

    def step(self, net, state, x, y) -> RuleStep:
        alignment_update(net, state, state["noise"], self.sigma, self.mirror_batch,
                         amp=self.alpha, decay=self.beta, null=self.gamma)
        loss, gw, gb = feedback_gradients(net, x, y, state["B"])
        return RuleStep(weights=gw, biases=gb, loss=loss)


def alignment_angle(net, state) -> torch.Tensor:
    """Angle in degrees between W_l and B_l (flattened) per network and layer >= 1: (M, L-1)."""
    out = []
    for w, b in zip(net.weights[1:], state["B"][1:]):
        wf, bf = w.reshape(w.shape[0], -1), b.reshape(b.shape[0], -1)
        cos = torch.nn.functional.cosine_similarity(wf, bf, dim=1)
        out.append(torch.rad2deg(torch.arccos(cos.clamp(-1, 1))))
    return torch.stack(out, 1)


__all__ = [
    "DirectFeedbackAlignment", "FeedbackAlignment", "InformationAlignment", "KolenPollack",
    "SignSymmetry", "WeightMirror", "alignment_angle", "random_feedback", "unit_view",
]
