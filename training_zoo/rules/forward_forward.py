"""The Forward-Forward algorithm (Hinton 2022): layer-local goodness of positive vs negative data."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from training_zoo.architectures import PopulationCNN, layer_pre_with
from training_zoo.dense import per_example_ce
from training_zoo.rules.base import RuleStep, StochasticRule, Variant
from training_zoo.rules.node_perturbation import child_generator
from training_zoo.rules.registry import register


def to_units(net, h: torch.Tensor) -> torch.Tensor:
    """Per-network activity as (M, B, units), from the dense or the conv (B, M*C, H, W) layout."""
    if h.dim() == 4:
        return h.reshape(h.shape[0], net.m, -1).transpose(0, 1)
    return h


def like(net, u: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """(M, B, units) back into h's layout."""
    if h.dim() == 4:
        return u.transpose(0, 1).reshape(h.shape)
    return u


@register
class ForwardForward(StochasticRule):
    r"""Forward-Forward: every hidden layer separates positive from negative data by goodness.

    Data. The label is written into the first C input features (``label_scale`` times one-hot;
    the input must have more than C features; for ``cnn`` the first C pixels): positive data
    carry the true label, negative data a uniformly drawn wrong one, neutral data
    :math:`\text{label\_scale}/C` everywhere.

    Network (the rule's own forward, :meth:`forward`): every layer, the first included, sees
    its input with its length normalised (Hinton 2022: the length carries the previous layer's
    goodness, the orientation is passed on). The fixed length is Hinton's own code's
    (``ffnormrows``: "a sum of squared activities that averages 1 per neuron"), unit
    root-mean-square, :math:`\hat h = h / (\sqrt{\mathrm{mean}_i h_i^2} + \epsilon)`;
    ``norm="length"`` gives unit length (the paper's wording read literally, length 1 instead of
    :math:`\sqrt n`): :math:`r_l = f(W_l \hat h_{l-1} + b_l)`, :math:`h_l = r_l` (``resmlp`` skip:
    :math:`h_l = \hat h_{l-1} + r_l`; ``cnn``: the norm over all units of the feature map).

    Objective per hidden layer, goodness :math:`G_l = \sum_i r_{l,i}^2` of the layer's own
    branch against :math:`\theta n_l` (Hinton's code: the threshold is the layer size, so
    :math:`\theta = 1`), or ``goodness="mean"``: :math:`\mathrm{mean}_i\, r_{l,i}^2` against
    :math:`\theta` (default 2, as mohammadpz/pytorch_forward_forward); 0.5 by default for units
    bounded by 1, whose mean square cannot reach 2 (``threshold`` overrides):

    .. math::
        \ell_l = \mathrm{softplus}(\theta - G_l^{+}) + \mathrm{softplus}(G_l^{-} - \theta),

    minimised by each layer alone with its input held fixed (batch mean; autograd of each
    layer's loss on its own parameters with detached inputs).

    Prediction (:meth:`predict`, Hinton 2022): for every label, the goodness accumulated over
    the hidden layers *from the second on* (all of them for a one-hidden-layer network,
    ``predict_from``) with that label embedded; the highest wins. The readout is a local
    softmax classifier on the neutral pass's normalised top activity (delta rule), Hinton's
    second evaluation method; it gives :meth:`forward` its logits and is the training loss.

    With unit-*length* inputs (the ``unit_length`` variant) the pre-activations of wide layers
    start small and goodness-based prediction learns slowly: on digits (2 x 32 relu, best of an
    lr sweep) 0.15 after 5 epochs and 0.81-0.88 after 20.
    """

    id = "forward_forward"
    family = "local_objective"
    reference = "Hinton 2022, arXiv:2212.13345 (The Forward-Forward Algorithm)"
    description = "Forward-Forward: per-layer goodness, positive (true label) vs negative (wrong label) data"
    supports = ("mlp", "resmlp", "cnn")
    variants = {
        "default": Variant("Hinton 2022 and his code (ffnormrows): every layer's input normalised to unit "
                           "RMS, goodness the sum of squares against the layer size, prediction from the "
                           "second hidden layer on."),
        "unit_length": Variant("Every layer's input normalised to unit length (the paper's wording read "
                               "literally) and mean-square goodness against 2 (mohammadpz/pytorch_forward_forward).",
                               {"norm": "length", "goodness": "mean"}),
        "all_layers": Variant("Prediction summing goodness over every hidden layer, as in the widely used "
                              "PyTorch reimplementation (mohammadpz/pytorch_forward_forward).",
                              {"predict_from": 0}),
        "sum_goodness": Variant("Unit-length inputs with goodness as the sum of squares against a threshold "
                                "scaled by the layer width (the paper's formula p = sigma(sum_j y_j^2 - theta)).",
                                {"norm": "length", "goodness": "sum", "threshold": 2.0}),
    }

    BOUNDED = ("tanh", "sigmoid", "hardtanh")

    def __init__(self, threshold: float | None = None, label_scale: float = 3.0, eps: float = 1e-4,
                 goodness: str = "sum", predict_from: int = 1, norm: str = "rms"):
        if goodness not in ("mean", "sum"):
            raise ValueError(f"goodness must be 'mean' or 'sum', got {goodness!r}")
        if norm not in ("length", "rms"):
            raise ValueError(f"norm must be 'length' or 'rms', got {norm!r}")
        self.norm = norm
        self.threshold = None if threshold is None else float(threshold)
        self.label_scale = float(label_scale)
        self.eps = float(eps)
        self.goodness = goodness
        self.predict_from = int(predict_from)

    def init_state(self, net, generator):
        return {"generator": child_generator(generator, net.device)}

    def theta(self, net) -> float:
        """The goodness threshold per unit: ``threshold``, or by default 1 for sum-of-squares
        goodness (Hinton's code: the layer size), 2 for mean-square goodness, 0.5 for units
        bounded by 1."""
        if self.threshold is not None:
            return self.threshold
        if net.activation.name in self.BOUNDED:
            return 0.5
        return 1.0 if self.goodness == "sum" else 2.0

    def embed(self, x: torch.Tensor, labels: torch.Tensor | None, n_classes: int) -> torch.Tensor:
        """x (M, B, n) with the label (M, B) written into its first C features (None: neutral)."""
        if x.shape[-1] <= n_classes:
            raise ValueError(f"forward_forward needs more input features than classes "
                             f"(got {x.shape[-1]} features, {n_classes} classes)")
        out = x.clone()
        if labels is None:
            out[..., :n_classes] = self.label_scale / n_classes
        else:
            out[..., :n_classes] = self.label_scale * F.one_hot(labels, n_classes).to(x.dtype)
        return out

    def normalise(self, net, h: torch.Tensor) -> torch.Tensor:
        """Unit length (or unit RMS) per example and network (over all units of a conv feature map)."""
        u = to_units(net, h)
        size = u.norm(dim=-1, keepdim=True)
        if self.norm == "rms":
            size = size / u.shape[-1] ** 0.5
        return like(net, u / (size + self.eps), h)

    def goodness_of(self, net, r: torch.Tensor) -> torch.Tensor:
        u = to_units(net, r) ** 2
        return u.sum(-1) if self.goodness == "sum" else u.mean(-1)

    def layer_theta(self, net, r) -> float:
        return self.theta(net) * (to_units(net, r).shape[-1] if self.goodness == "sum" else 1.0)

    @staticmethod
    def pre(net, layer, h, w, b):
        """Pre-activation with per-network inputs (the embedded labels differ per network)."""
        if isinstance(net, PopulationCNN) and layer == 0:
            m, co = w.shape[:2]
            return F.conv2d(h, w.reshape(m * co, *w.shape[2:]), b.reshape(-1),
                            stride=net.stride, padding=net.padding, groups=m)
        return layer_pre_with(net, layer, h, w, b)

    def embedded_input(self, net, x, labels, c):
        """x (B, n) -> the labelled input in the network's per-network layout."""
        flat = x.reshape(x.shape[0], -1).unsqueeze(0).expand(net.m, -1, -1)
        e = self.embed(flat, labels, c)
        if isinstance(net, PopulationCNN):
            return e.transpose(0, 1).reshape(x.shape[0], net.m * net.input_shape[0], *net.input_shape[1:])
        return e

    def layers(self, net, h, ws=None, bs=None):
        """Per hidden layer: pre-activation a_l, branch r_l, activity h_l (inputs detached)."""
        ws = net.weights if ws is None else ws
        bs = net.biases if bs is None else bs
        pre, branch, acts = [], [], []
        for layer in range(net.n_layers - 1):
            inp = self.normalise(net, h).detach()
            a = self.pre(net, layer, inp, ws[layer], bs[layer])
            r = net.activation.f(a)
            h = inp + r if net.is_skip(layer) else r
            pre.append(a)
            branch.append(r)
            acts.append(h)
        return pre, branch, acts

    def forward(self, net, state, x):
        """(pre, post) of the neutral-label pass in the network's layout: ``post[0]`` the raw
        input, ``post[l]`` hidden layer l's activity, ``post[-1]`` the readout logits."""
        c = net.weights[-1].shape[1]
        x_flat = x.reshape(x.shape[0], -1)
        pre, _, acts = self.layers(net, self.embedded_input(net, x_flat, None, c))
        top = to_units(net, self.normalise(net, acts[-1]))
        z = layer_pre_with(net, net.n_layers - 1, top, net.weights[-1], net.biases[-1])
        return [*pre, z], [net.broadcast_input(x_flat), *acts, z]

    def predict(self, net, state, x):
        """Accumulated goodness per candidate label: (M, B, C), larger = more likely."""
        x = x.reshape(x.shape[0], -1)
        b = x.shape[0]
        c = net.weights[-1].shape[1]
        labels = torch.arange(c, device=x.device).repeat_interleave(b).unsqueeze(0).expand(net.m, -1)
        _, branch, _ = self.layers(net, self.embedded_input(net, x.repeat(c, 1), labels, c))
        start = self.predict_from if self.predict_from < len(branch) else 0
        goodness = sum(self.goodness_of(net, r) for r in branch[start:])  # (M, C*B)
        return goodness.reshape(net.m, c, b).transpose(1, 2)

    def sample_noise(self, net, state, batch: int) -> torch.Tensor:
        """Offsets 1..C-1 that turn the true label into a wrong one: (M, B) integers."""
        c = net.weights[-1].shape[1]
        return torch.randint(1, c, (net.m, batch), generator=state["generator"], device=net.device)

    def step(self, net, state, x, y):
        return self.step_with_noise(net, state, x, y, self.sample_noise(net, state, x.shape[0]))

    def step_with_noise(self, net, state, x, y, noise):
        x = x.reshape(x.shape[0], -1)
        b = x.shape[0]
        c = net.weights[-1].shape[1]
        yy = y.unsqueeze(0).expand(net.m, -1) if y.dim() == 1 else y
        n = net.n_layers
        ws = [w.detach().requires_grad_(True) for w in net.weights[:-1]]
        bs = [v.detach().requires_grad_(True) for v in net.biases[:-1]]
        with torch.enable_grad():
            total = 0.0
            for labels, sign in ((yy, 1.0), ((yy + noise) % c, -1.0)):
                _, branch, _ = self.layers(net, self.embedded_input(net, x, labels, c), ws, bs)
                for r in branch:
                    g = self.goodness_of(net, r)
                    # softplus(theta - G) for positive data, softplus(G - theta) for negative
                    total = total + F.softplus(sign * (self.layer_theta(net, r) - g)).mean(1).sum()
            grads = torch.autograd.grad(total, [*ws, *bs])
        with torch.no_grad():
            _, _, acts = self.layers(net, self.embedded_input(net, x, None, c))
            top = to_units(net, self.normalise(net, acts[-1]))
            z = layer_pre_with(net, n - 1, top, net.weights[-1], net.biases[-1])
            err = torch.softmax(z, -1) - F.one_hot(yy, c).to(z.dtype)
            dw_out = torch.bmm(err.transpose(1, 2), top) / b
        return RuleStep(weights=[*grads[: n - 1], dw_out], biases=[*grads[n - 1 :], err.mean(1)],
                        loss=per_example_ce(z, y).mean(1))
