"""Architecture families of the zoo and the pieces every rule needs to run them generically.

Three families, all held as M stacked networks with the network index first:

- ``mlp``: :class:`training_zoo.dense.DenseStack` (1 to 5 hidden layers, widths 16 to 1024).
- ``resmlp``: the same with identity skips between equal-width hidden layers.
- ``cnn``: :class:`PopulationCNN`, small convolutional networks run as ONE grouped convolution
  per layer (the M networks' channels stacked, ``groups=M``) plus a dense readout.

``functional_forward`` runs any of them with explicit (autograd leaf) parameters and, where a
rule asks for it, *feedback* weights that replace the forward weights in the backward pass:
for a layer ``a = W h + b`` the custom autograd functions here return

    dL/dh = B^T dL/da        (instead of W^T dL/da; B has W's shape)
    dL/dW = dL/da h^T,  dL/db = sum_batch dL/da

which is the generic way to run feedback-alignment-type rules on dense and conv layers alike.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from rulefinder.vocabulary import ARCH_FAMILIES

from training_zoo.dense import ACTIVATIONS, INITS, Activation, DenseStack, LayeredPopulation, init_weight



class PopulationCNN(LayeredPopulation):
    """M small CNNs: ``len(channels)`` conv layers (k x k, stride 2, padding k//2) + linear readout.

    Layout: conv activations are ``(B, M * C, H, W)`` (network-major channel blocks), so layer
    ``l > 0`` is one ``conv2d(..., groups=M)``; the first layer sees the shared input
    ``(B, C_0, H, W)`` with the M networks' kernels stacked as output channels (``groups=1``).
    ``weights[l]`` is ``(M, C_out, C_in, k, k)`` for conv layers and ``(M, n_classes, F)`` for the
    readout; ``biases[l]`` is ``(M, C_out)`` / ``(M, n_classes)``.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        channels: Sequence[int],
        n_classes: int,
        m: int,
        *,
        activation: str = "relu",
        kernel: int = 3,
        stride: int = 2,
        init: str = "default",
        init_scale: float = 1.0,
        generator: torch.Generator | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ):
        self.input_shape = tuple(int(s) for s in input_shape)
        self.channels = [int(c) for c in channels]
        self.m = int(m)
        self.kernel, self.stride, self.padding = int(kernel), int(stride), int(kernel) // 2
        self.activation = Activation(activation)
        self.residual = False
        c, h, w = self.input_shape
        self.spatial = []  # output (H, W) of each conv layer
        shapes = []
        for c_out in self.channels:
            h = (h + 2 * self.padding - self.kernel) // self.stride + 1
            w = (w + 2 * self.padding - self.kernel) // self.stride + 1
            self.spatial.append((h, w))
            shapes.append((c_out, c, self.kernel, self.kernel))
            c = c_out
        self.n_flat = c * h * w
        shapes.append((int(n_classes), self.n_flat))
        self.shapes = shapes
        gen = generator if generator is not None else torch.Generator().manual_seed(0)
        self.weights, self.biases = [], []
        for shape in shapes:
            fan_in = int(math.prod(shape[1:]))
            wt = init_weight(self.m, shape[0], fan_in, init, init_scale, gen).reshape(self.m, *shape)
            b = torch.zeros(self.m, shape[0])
            self.weights.append(wt.to(device=device, dtype=dtype))
            self.biases.append(b.to(device=device, dtype=dtype))

    @property
    def n_conv(self) -> int:
        return len(self.channels)

    @property
    def sizes(self) -> list[int]:
        """Units per layer (input first), flattened over channels and space."""
        c, h, w = self.input_shape
        out = [c * h * w]
        out += [cc * hh * ww for cc, (hh, ww) in zip(self.channels, self.spatial)]
        return out + [self.shapes[-1][0]]

    def is_skip(self, layer: int) -> bool:
        return False

    def broadcast_input(self, x: torch.Tensor) -> torch.Tensor:
        """(B, n_features) shared input -> (B, C, H, W)."""
        return x.reshape(x.shape[0], *self.input_shape)

    def conv_args(self, layer: int) -> dict:
        return {"stride": self.stride, "padding": self.padding, "groups": 1 if layer == 0 else self.m}

    def layer_pre_with(self, layer, h_prev, w, b, feedback=None):
        if layer < self.n_conv:
            if feedback is not None:
                return FeedbackConv.apply(h_prev, w, b, feedback, self.conv_args(layer))
            m, co = w.shape[:2]
            return F.conv2d(h_prev, w.reshape(m * co, *w.shape[2:]), b.reshape(-1), **self.conv_args(layer))
        if h_prev.dim() == 4:  # (B, M*C, H, W) -> (M, B, F)
            h_prev = self.unit_view(h_prev)
        if feedback is not None:
            return FeedbackLinear.apply(h_prev, w, b, feedback)
        return torch.baddbmm(b.unsqueeze(1), h_prev, w.transpose(1, 2))

    def layer_pre(self, layer: int, h_prev: torch.Tensor) -> torch.Tensor:
        return self.layer_pre_with(layer, h_prev, self.weights[layer], self.biases[layer])

    def layer_post(self, layer: int, a: torch.Tensor, h_prev: torch.Tensor) -> torch.Tensor:
        return a if layer == self.n_layers - 1 else self.activation.f(a)

    def unit_view(self, h: torch.Tensor) -> torch.Tensor:
        """Any layer's tensor as (M, B, units)."""
        if h.dim() == 4:
            b = h.shape[0]
            return h.reshape(b, self.m, -1).transpose(0, 1)
        return h


class FeedbackLinear(torch.autograd.Function):
    """a = h W^T + b batched over networks; backward sends dL/dh = dL/da B (B: W's shape)."""

    @staticmethod
    def forward(ctx, h, w, b, fb):
        ctx.save_for_backward(h, fb)
        return torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))

    @staticmethod
    def backward(ctx, g):
        h, fb = ctx.saved_tensors
        gh = torch.bmm(g, fb) if ctx.needs_input_grad[0] else None
        gw = torch.bmm(g.transpose(1, 2), h.expand(g.shape[0], -1, -1)) if ctx.needs_input_grad[1] else None
        gb = g.sum(1) if ctx.needs_input_grad[2] else None
        return gh, gw, gb, None


class FeedbackConv(torch.autograd.Function):
    """Population conv (see :class:`PopulationCNN`); backward to the input uses kernels ``fb``."""

    @staticmethod
    def forward(ctx, h, w, b, fb, args):
        m, co = w.shape[:2]
        wf = w.reshape(m * co, *w.shape[2:])
        ctx.save_for_backward(h, fb)
        ctx.args, ctx.wshape = args, w.shape
        return F.conv2d(h, wf, b.reshape(-1), **args)

    @staticmethod
    def backward(ctx, g):
        h, fb = ctx.saved_tensors
        m, co = ctx.wshape[:2]
        flat = (m * co, *ctx.wshape[2:])
        gh = gw = gb = None
        if ctx.needs_input_grad[0]:
            gh = torch.nn.grad.conv2d_input(h.shape, fb.reshape(flat), g, **ctx.args)
        if ctx.needs_input_grad[1]:
            gw = torch.nn.grad.conv2d_weight(h, flat, g, **ctx.args).reshape(ctx.wshape)
        if ctx.needs_input_grad[2]:
            gb = g.sum((0, 2, 3)).reshape(m, co)
        return gh, gw, gb, None, None


def arch_family(net) -> str:
    if isinstance(net, PopulationCNN):
        return "cnn"
    if isinstance(net, DenseStack):
        return "resmlp" if net.residual else "mlp"
    raise TypeError(f"not a zoo network: {type(net).__name__}")


def shared_input_linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a = x W_m^T + b_m for an input x (B, n_in) SHARED by the M networks, as ONE large GEMM
    ``x @ [W_1; ...; W_M]^T`` (B, M n_out) instead of M small ones; its weight gradient under
    autograd is one GEMM as well. Returns (M, B, n_out)."""
    m, n_out, n_in = w.shape
    a = torch.matmul(x, w.reshape(m * n_out, n_in).t()).view(x.shape[0], m, n_out).transpose(0, 1)
    return (a + b.unsqueeze(1)).contiguous()


def layer_pre_with(net, layer, h_prev, w, b, feedback=None):
    """Pre-activation of ``layer`` with explicit parameters (and optional feedback weights)."""
    if isinstance(net, PopulationCNN):
        return net.layer_pre_with(layer, h_prev, w, b, feedback)
    if feedback is None and h_prev.dim() == 3 and h_prev.stride(0) == 0:
        return shared_input_linear(h_prev[0], w, b)
    if feedback is not None:
        return FeedbackLinear.apply(h_prev, w, b, feedback)
    return torch.baddbmm(b.unsqueeze(1), h_prev, w.transpose(1, 2))


def functional_forward(net, x, weights, biases, feedback=None, detach_inputs=False):
    """``(pre, post)`` as ``net.forward`` but with the given parameters.

    ``feedback[l]`` (or None per layer) replaces ``W_l`` in the backward pass to layer ``l``'s
    input; ``detach_inputs`` cuts the graph between layers, so that autograd of
    ``sum_l <a_l, delta_l>`` gives exactly the local updates ``delta_l h_{l-1}^T``.
    """
    h = net.broadcast_input(x)
    pre, post = [], [h]
    for layer in range(net.n_layers):
        hin = h.detach() if detach_inputs else h
        fb = feedback[layer] if feedback is not None else None
        a = layer_pre_with(net, layer, hin, weights[layer], biases[layer], fb)
        h = net.layer_post(layer, a, hin)
        pre.append(a)
        post.append(h)
    return pre, post


def unit_view(net, h: torch.Tensor) -> torch.Tensor:
    """A layer's activations as (M, B, units), whatever the architecture's layout."""
    if isinstance(net, PopulationCNN):
        return net.unit_view(h)
    return net.broadcast_input(h) if h.dim() == 2 else h


def reinitialise(net, schemes: Sequence[str], scales: Sequence[float], seeds: Sequence[int]) -> None:
    """Re-draw every network's parameters from its own seed, scheme and scale (in place).

    Network ``i`` depends only on ``(schemes[i], scales[i], seeds[i])`` and the shapes, so a
    network is reproducible whatever population it is trained in. Biases are zero except for
    the ``default`` scheme (PyTorch's nn.Linear: U(-1/sqrt(fan_in), 1/sqrt(fan_in))).
    """
    for i in range(net.m):
        if schemes[i] not in INITS:
            raise ValueError(f"unknown init scheme {schemes[i]!r}; known: {', '.join(INITS)}")
        gen = torch.Generator().manual_seed(int(seeds[i]))
        for w, b in zip(net.weights, net.biases):
            shape = w.shape[1:]
            fan_in = int(math.prod(shape[1:]))
            wi = init_weight(1, shape[0], fan_in, schemes[i], float(scales[i]), gen).reshape(shape)
            if schemes[i] == "default":
                bound = 1.0 / math.sqrt(fan_in)
                bi = (torch.rand(shape[0], generator=gen) * 2 - 1) * bound
            else:
                bi = torch.zeros(shape[0])
            w[i].copy_(wi)
            b[i].copy_(bi)


def build_network(
    arch: dict,
    input_shape: Sequence[int],
    n_classes: int,
    m: int,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    generator: torch.Generator | None = None,
):
    """Build M networks from an architecture dict.

    ``{"family": "mlp"|"resmlp", "depth": 1..5, "width": 16..1024, "activation": ...}`` or
    ``{"family": "cnn", "channels": [8, 16], "activation": ..., "kernel": 3}``.
    """
    family = arch.get("family", "mlp")
    act = arch.get("activation", "relu")
    if act not in ACTIVATIONS:
        raise ValueError(f"unknown activation {act!r}; known: {', '.join(ACTIVATIONS)}")
    if family in ("mlp", "resmlp"):
        depth, width = int(arch.get("depth", 2)), int(arch.get("width", 64))
        widths = arch.get("widths") or [width] * depth
        sizes = [int(math.prod(input_shape)), *[int(w) for w in widths], int(n_classes)]
        return DenseStack(
            sizes, m, activation=act, residual=family == "resmlp", generator=generator,
            device=device, dtype=dtype,
        )
    if family == "cnn":
        return PopulationCNN(
            input_shape, arch.get("channels", [8, 16]), n_classes, m, activation=act,
            kernel=int(arch.get("kernel", 3)), generator=generator, device=device, dtype=dtype,
        )
    raise ValueError(f"unknown architecture family {family!r}; known: {', '.join(ARCH_FAMILIES)}")


def describe(arch: dict) -> str:
    """Short architecture label, e.g. ``mlp-2x64-relu`` or ``cnn-8.16-tanh``."""
    family = arch.get("family", "mlp")
    act = arch.get("activation", "relu")
    if family == "cnn":
        return f"cnn-{'.'.join(str(c) for c in arch.get('channels', [8, 16]))}-{act}"
    return f"{family}-{arch.get('depth', 2)}x{arch.get('width', 64)}-{act}"
