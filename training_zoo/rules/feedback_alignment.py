"""The feedback-alignment family: backprop's error pathway with weights other than W^T.

Notation (every network of the population alike; B_l has W_l's shape (n_out, n_in), so the
backward pass computes dL/dh_{l-1} = B_l^T delta_l where backprop uses W_l^T):

    a_l = W_l h_{l-1} + b_l,   h_l = f(a_l),   e = dL/dz = (softmax(z) - onehot(y)) / B
    delta_L = e,   delta_l = (B_{l+1}^T delta_{l+1}) * f'(a_l)
    direction: dW_l = delta_l h_{l-1}^T,   db_l = sum_batch delta_l

The rules differ in what B is and how it changes. B_1 (to the input) is never needed. On conv
layers the same holds with convolution in place of the product (see
:mod:`training_zoo.architectures`). B is rule state, not a parameter handed to the
optimizer: weight mirror and information alignment update it by plain SGD at their
``feedback_lr``; Kolen-Pollack steps it through an optimizer of W's kind (see its docstring).
Random feedback is drawn at the Glorot/Xavier scale by default (:func:`draw_feedback`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from training_zoo.architectures import PopulationCNN, functional_forward, layer_pre_with, unit_view
from training_zoo.dense import cross_entropy_per_network, output_error
from training_zoo.optimizers import make_optimizer
from training_zoo.rules.backprop import feedback_gradients, leaves
from training_zoo.rules.base import LearningRule, RuleStep, Variant
from training_zoo.rules.registry import register


FEEDBACK_INITS = ("xavier", "fan_in", "kaiming")


def _fans(shape) -> tuple[int, int]:
    """(fan_in, fan_out) of a weight of one network, torch's convention (kernel area counted)."""
    receptive = int(math.prod(shape[2:]))
    return int(shape[1]) * receptive, int(shape[0]) * receptive


def draw_feedback(m: int, shape, scheme: str, scale: float, generator: torch.Generator) -> torch.Tensor:
    """M random matrices of one network's ``shape`` (W's shape: out, in, [k, k]).

    ``xavier``: Glorot uniform U(-a, a), a = sqrt(6 / (fan_in + fan_out)) (Glorot & Bengio
    2010; the feedback init of BioTorch, Sanfiz & Akrout 2021, and of most FA/DFA code);
    ``fan_in``: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (torch.nn.Linear's default);
    ``kaiming``: N(0, 2 / fan_in) (He et al. 2015). ``scale`` multiplies the result.
    """
    fan_in, fan_out = _fans(shape)
    if scheme == "xavier":
        u = torch.rand(m, *shape, generator=generator) * 2 - 1
        w = u * math.sqrt(6.0 / (fan_in + fan_out))
    elif scheme == "fan_in":
        w = (torch.rand(m, *shape, generator=generator) * 2 - 1) / math.sqrt(fan_in)
    elif scheme == "kaiming":
        w = torch.randn(m, *shape, generator=generator) * math.sqrt(2.0 / fan_in)
    else:
        raise ValueError(f"unknown feedback init {scheme!r}; known: {', '.join(FEEDBACK_INITS)}")
    return w * scale


def random_feedback(net, generator: torch.Generator, scale: float = 1.0,
                    init: str = "xavier") -> list[torch.Tensor | None]:
    """Fixed random B_l with W_l's shape drawn by :func:`draw_feedback`; None for layer 0."""
    out: list[torch.Tensor | None] = [None]
    for w in net.weights[1:]:
        b = draw_feedback(net.m, w.shape[1:], init, scale, generator)
        out.append(b.to(device=w.device, dtype=w.dtype))
    return out


def _init_variants(default_text: str) -> dict[str, Variant]:
    """The feedback-initialisation variants every random-feedback rule shares."""
    return {
        "default": Variant(default_text),
        "fan_in_feedback": Variant(
            "Feedback drawn like torch.nn.Linear's default weights, U(+-1/sqrt(fan_in)) (code that "
            "initialises B with the layer's own reset_parameters).", {"feedback_init": "fan_in"}),
        "gaussian_feedback": Variant(
            "Gaussian feedback at He scale, N(0, 2/fan_in) (code that draws B with kaiming_normal_).",
            {"feedback_init": "kaiming"}),
    }


@register
class FeedbackAlignment(LearningRule):
    """Feedback alignment (Lillicrap et al. 2016): B_l fixed and random.

        delta_l = (B_{l+1}^T delta_{l+1}) * f'(a_l),   B ~ U(-a, a),  a = sqrt(6/(fan_in+fan_out)).

    The default draws B at the Glorot/Xavier scale (Glorot & Bengio 2010), as BioTorch
    (Sanfiz & Akrout 2021, the benchmark code base of the FA family) and most FA code do, so
    the backward signal has the forward pass's scale. The forward weights come to align with
    B^T during learning (angle below 90 degrees).
    """

    id = "feedback_alignment"
    family = "feedback_alignment"
    reference = "Lillicrap, Cownden, Tweed & Akerman 2016, Nat. Commun. 7:13276"
    description = "Backprop's error pathway through fixed random feedback weights."
    supports = ("mlp", "resmlp", "cnn")
    variants = _init_variants("Fixed random feedback at the Glorot/Xavier uniform scale (BioTorch).")

    def __init__(self, feedback_scale: float = 1.0, feedback_init: str = "xavier"):
        self.feedback_scale = float(feedback_scale)
        self.feedback_init = str(feedback_init)

    def init_state(self, net, generator):
        return {"B": random_feedback(net, generator, self.feedback_scale, self.feedback_init)}

    def step(self, net, state, x, y) -> RuleStep:
        loss, gw, gb = feedback_gradients(net, x, y, state["B"])
        return RuleStep(weights=gw, biases=gb, loss=loss)


SIGN_MAGNITUDES = ("fixed", "fixed_random", "batch_random", "mean_abs")


@register
class SignSymmetry(LearningRule):
    """Sign symmetry (Liao, Leibo & Poggio 2016; Xiao et al. 2018): feedback shares only the
    signs of the forward weights, with a magnitude that does not come from W:

        uSF   (``magnitude="fixed"``, default):  B_l = s_l sign(W_l),
              s_l = sqrt(2 / (fan_in + fan_out)), the std of the Glorot init (a fixed scale)
        frSF  (``"fixed_random"``):  B_l = |R_l| * sign(W_l),  R_l ~ Glorot uniform, drawn once
        brSF  (``"batch_random"``):  as frSF with R_l redrawn on every batch
        ``"mean_abs"``:  B_l = sign(W_l) mean|W_l| (one number per network and layer: tracks
              W's scale; an implementation choice, not Liao et al.'s)

    The backward pass is delta_l = (B_{l+1}^T delta_{l+1}) * f'(a_l). uSF, brSF and frSF are
    Liao et al.'s names (uniform, batchwise-random and fixed-random magnitude sign-concordant
    feedback).
    """

    id = "sign_symmetry"
    family = "feedback_alignment"
    reference = "Liao, Leibo & Poggio 2016, AAAI; Xiao, Chen, Liao & Poggio 2018, arXiv:1811.03567"
    description = "Feedback weights with the signs of the forward weights and a magnitude of their own."
    supports = ("mlp", "resmlp", "cnn")
    variants = {
        "default": Variant("uSF: sign(W) at a fixed scale, the std of the Glorot init (Liao et al. 2016; "
                           "Xiao et al. 2018)."),
        "frsf": Variant("Fixed random magnitudes |R| * sign(W), R drawn once (Liao et al. 2016).",
                        {"magnitude": "fixed_random"}),
        "brsf": Variant("Batchwise random magnitudes |R| * sign(W), R redrawn every batch (Liao et al. 2016).",
                        {"magnitude": "batch_random"}),
        "mean_abs": Variant("sign(W) scaled by the layer's mean |W| (code that keeps the feedback on "
                            "W's scale).", {"magnitude": "mean_abs"}),
    }

    def __init__(self, magnitude: str = "fixed"):
        if magnitude not in SIGN_MAGNITUDES:
            raise ValueError(f"magnitude must be one of {SIGN_MAGNITUDES}, got {magnitude!r}")
        self.magnitude = magnitude

    def init_state(self, net, generator):
        if self.magnitude == "fixed_random":
            return {"R": [None if r is None else r.abs() for r in random_feedback(net, generator)]}
        if self.magnitude == "batch_random":
            seed = int(torch.randint(0, 2**62, (1,), generator=generator))
            return {"noise": torch.Generator().manual_seed(seed)}
        return {}

    def feedback(self, net, state=None) -> list[torch.Tensor | None]:
        state = {} if state is None else state
        if self.magnitude == "batch_random":
            mags = [None if r is None else r.abs() for r in random_feedback(net, state["noise"])]
        elif self.magnitude == "fixed_random":
            mags = state["R"]
        else:
            mags = [None] * net.n_layers
        out: list[torch.Tensor | None] = [None]
        for layer, w in enumerate(net.weights[1:], start=1):
            if self.magnitude == "fixed":
                fan_in, fan_out = _fans(w.shape[1:])
                mag = math.sqrt(2.0 / (fan_in + fan_out))
            elif self.magnitude == "mean_abs":
                mag = w.abs().reshape(w.shape[0], -1).mean(1).view(-1, *([1] * (w.dim() - 1)))
            else:
                mag = mags[layer]
            out.append(torch.sign(w) * mag)
        return out

    def step(self, net, state, x, y) -> RuleStep:
        loss, gw, gb = feedback_gradients(net, x, y, self.feedback(net, state))
        return RuleStep(weights=gw, biases=gb, loss=loss)


@register
class DirectFeedbackAlignment(LearningRule):
    """Direct feedback alignment (Nokland 2016): the output error reaches every hidden layer
    directly through a fixed random matrix D_l (n_classes x units of layer l):

        delta_L = e,   delta_l = (e D_l) * f'(a_l)   (l < L),
        dW_l = delta_l h_{l-1}^T,  db_l = sum_batch delta_l.

    D_l is drawn at the Glorot/Xavier uniform scale of its own shape,
    U(+-sqrt(6 / (n_classes + units))), as BioTorch (Sanfiz & Akrout 2021) does.
    """

    id = "direct_feedback_alignment"
    family = "feedback_alignment"
    reference = "Nokland 2016, NeurIPS 29"
    description = "Output error projected to every hidden layer by fixed random matrices."
    supports = ("mlp", "resmlp", "cnn")
    variants = _init_variants("Fixed random direct feedback at the Glorot/Xavier uniform scale (BioTorch).")

    def __init__(self, feedback_scale: float = 1.0, feedback_init: str = "xavier"):
        self.feedback_scale = float(feedback_scale)
        self.feedback_init = str(feedback_init)

    def init_state(self, net, generator):
        n_classes = net.weights[-1].shape[1]
        ds = []
        for units in net.sizes[1:-1]:
            # D maps the error (n_classes) to the layer (units): fan_in = n_classes
            d = draw_feedback(net.m, (units, n_classes), self.feedback_init, self.feedback_scale, generator)
            ds.append(d.transpose(1, 2).to(device=net.device, dtype=net.weights[0].dtype))
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
    """Kolen-Pollack (Kolen & Pollack 1994; Akrout et al. 2019): B receives exactly W's learning
    signal and the same weight decay, through the same optimizer, so their difference decays:

        dW_l = delta_l h_{l-1}^T + lambda W_l,   dB_l = delta_l h_{l-1}^T + lambda B_l
        W_l <- W_l - eta opt(dW_l),              B_l <- B_l - eta opt(dB_l)

    delta uses B as in feedback alignment. With SGD, W_t - B_t = (1 - eta lambda)^t (W_0 - B_0)
    (Akrout et al.'s eq. for KP); with momentum mu the difference follows the heavy-ball
    recurrence D_{t+1} = D_t - eta v_t, v_t = mu v_{t-1} + lambda D_t (linear, so D_t = c_t D_0);
    with Adam it shrinks element-wise at rate about eta lambda / sqrt(v). Akrout et al.'s code
    puts W and B in one torch optimizer with ``weight_decay``: that is what this does.

    The trainer hands the rule its optimizer through :meth:`bind_optimizer` (the same kind,
    per-network learning rates and hyperparameters as W's); outside the trainer B is stepped
    by plain SGD at ``feedback_lr``, as in the ``separate_sgd`` variant.
    """

    id = "kolen_pollack"
    family = "feedback_alignment"
    reference = "Akrout, Wilson, Humphreys, Lillicrap & Tweed 2019, NeurIPS 32"
    description = "Feedback weights get the forward weights' updates; weight decay aligns them."
    supports = ("mlp", "resmlp", "cnn")
    variants = {
        "default": Variant("B gets W's update and weight decay through the same optimizer (Akrout et al. "
                           "2019's code: one torch optimizer with weight_decay over W and B); Glorot B_0."),
        "fan_in_feedback": Variant("B_0 drawn like torch.nn.Linear's default, U(+-1/sqrt(fan_in)).",
                                   {"feedback_init": "fan_in"}),
        "separate_sgd": Variant("B stepped by its own plain SGD at a fixed feedback rate whatever W's "
                                "optimizer (code that keeps B out of the model's optimizer).",
                                {"shared_optimizer": False}),
    }

    def __init__(self, weight_decay: float = 1e-3, feedback_lr: float = 0.05,
                 shared_optimizer: bool = True, feedback_init: str = "xavier"):
        self.weight_decay = float(weight_decay)
        self.feedback_lr = float(feedback_lr)
        self.shared_optimizer = bool(shared_optimizer)
        self.feedback_init = str(feedback_init)

    def init_state(self, net, generator):
        fb = random_feedback(net, generator, init=self.feedback_init)
        return {"B": fb, "B_optimizer": make_optimizer("sgd", [b for b in fb if b is not None], self.feedback_lr)}

    def bind_optimizer(self, state, make) -> None:
        """Called by the trainer with ``make(params) -> optimizer`` of W's kind and settings."""
        if self.shared_optimizer:
            state["B_optimizer"] = make([b for b in state["B"] if b is not None])

    def step(self, net, state, x, y) -> RuleStep:
        loss, gw, gb = feedback_gradients(net, x, y, state["B"])
        lam = self.weight_decay
        state["B_optimizer"].step([gw[layer] + lam * b for layer, b in enumerate(state["B"]) if b is not None])
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
    variants = {
        "default": Variant("One mirror step of 32 noise samples per learning step, Glorot B_0 (Akrout et "
                           "al. 2019)."),
        "long_mirror": Variant("A mirror phase of 128 noise samples per learning step at a quarter of the "
                               "rate (code that mirrors on larger noise batches).",
                               {"mirror_batch": 128, "feedback_lr": 0.0125}),
        "fan_in_feedback": Variant("B_0 drawn like torch.nn.Linear's default, U(+-1/sqrt(fan_in)).",
                                   {"feedback_init": "fan_in"}),
    }

    def __init__(self, feedback_lr: float = 0.05, sigma: float = 1.0, decay: float = 1.0,
                 mirror_batch: int = 32, feedback_init: str = "xavier"):
        self.feedback_lr = float(feedback_lr)
        self.sigma = float(sigma)
        self.decay = float(decay)
        self.mirror_batch = int(mirror_batch)
        self.feedback_init = str(feedback_init)

    def init_state(self, net, generator):
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        return {"B": random_feedback(net, generator, init=self.feedback_init), "feedback_lr": self.feedback_lr,
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
    variants = {
        "default": Variant("amp + decay + null (Kunin et al. 2020's information alignment), Glorot B_0."),
        "strong_null": Variant("A ten times stronger null primitive (gamma = 1): B is pushed further from "
                               "W's own activity (Kunin et al.'s tuned gamma differs per architecture).",
                               {"gamma": 1.0}),
        "fan_in_feedback": Variant("B_0 drawn like torch.nn.Linear's default, U(+-1/sqrt(fan_in)).",
                                   {"feedback_init": "fan_in"}),
    }

    def __init__(self, feedback_lr: float = 0.05, sigma: float = 1.0, alpha: float = 1.0,
                 beta: float = 1.0, gamma: float = 0.1, mirror_batch: int = 32, feedback_init: str = "xavier"):
        self.feedback_lr = float(feedback_lr)
        self.sigma = float(sigma)
        self.alpha, self.beta, self.gamma = float(alpha), float(beta), float(gamma)
        self.mirror_batch = int(mirror_batch)
        self.feedback_init = str(feedback_init)

    def init_state(self, net, generator):
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        return {"B": random_feedback(net, generator, init=self.feedback_init), "feedback_lr": self.feedback_lr,
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
