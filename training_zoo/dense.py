"""A population of M dense networks of one shape, held as stacked weights.

This is the shared representation that the population trainer, the observable recorder and
every learning rule work on for the ``mlp`` and ``resmlp`` architecture families:

    h_0 = x                                   (M, B, n_0)
    a_l = h_{l-1} @ W_l^T + b_l               W_l: (M, n_l, n_{l-1}), b_l: (M, n_l)
    h_l = f(a_l)                              l = 1 .. L-1   (hidden layers)
    h_l = h_{l-1} + f(a_l)                    resmlp, when n_l == n_{l-1} (identity skip)
    z   = a_L = h_{L-1} @ W_L^T + b_L         linear readout (logits)

Every tensor has the network index first. Hyperparameters that differ per network (learning
rate, ...) live with the trainer, not here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Activation:
    """A pointwise nonlinearity with its derivative written as a function of the pre-activation."""

    name: str

    def f(self, a: torch.Tensor) -> torch.Tensor:
        n = self.name
        if n == "relu":
            return torch.relu(a)
        if n == "tanh":
            return torch.tanh(a)
        if n == "sigmoid":
            return torch.sigmoid(a)
        if n == "softplus":
            return torch.nn.functional.softplus(a)
        if n == "elu":
            return torch.nn.functional.elu(a)
        if n == "leaky_relu":
            return torch.nn.functional.leaky_relu(a, 0.01)
        if n == "hardtanh":
            return torch.clamp(a, -1.0, 1.0)
        if n == "linear":
            return a
        raise ValueError(f"unknown activation {n!r}; known: {', '.join(ACTIVATIONS)}")

    def df(self, a: torch.Tensor) -> torch.Tensor:
        n = self.name
        if n == "relu":
            return (a > 0).to(a.dtype)
        if n == "tanh":
            return 1.0 - torch.tanh(a) ** 2
        if n == "sigmoid":
            s = torch.sigmoid(a)
            return s * (1.0 - s)
        if n == "softplus":
            return torch.sigmoid(a)
        if n == "elu":
            return torch.where(a > 0, torch.ones_like(a), torch.exp(a))
        if n == "leaky_relu":
            return torch.where(a > 0, torch.ones_like(a), torch.full_like(a, 0.01))
        if n == "hardtanh":
            return ((a > -1.0) & (a < 1.0)).to(a.dtype)
        if n == "linear":
            return torch.ones_like(a)
        raise ValueError(f"unknown activation {n!r}; known: {', '.join(ACTIVATIONS)}")


ACTIVATIONS = ("relu", "tanh", "sigmoid", "softplus", "elu", "leaky_relu", "hardtanh", "linear")
INITS = ("default", "xavier", "kaiming", "orthogonal")


def init_weight(
    m: int, n_out: int, n_in: int, scheme: str, scale: float, generator: torch.Generator
) -> torch.Tensor:
    """Initial weights for M networks, drawn from ``generator`` (one draw per network, in order).

    ``default`` is PyTorch's nn.Linear: U(-1/sqrt(n_in), 1/sqrt(n_in)); ``xavier`` is Glorot
    uniform, ``kaiming`` He normal (fan-in, ReLU gain), ``orthogonal`` a QR-orthogonal matrix.
    ``scale`` multiplies the result.
    """
    if scheme == "default":
        bound = 1.0 / math.sqrt(n_in)
        w = (torch.rand(m, n_out, n_in, generator=generator) * 2 - 1) * bound
    elif scheme == "xavier":
        bound = math.sqrt(6.0 / (n_in + n_out))
        w = (torch.rand(m, n_out, n_in, generator=generator) * 2 - 1) * bound
    elif scheme == "kaiming":
        w = torch.randn(m, n_out, n_in, generator=generator) * math.sqrt(2.0 / n_in)
    elif scheme == "orthogonal":
        g = torch.randn(m, max(n_out, n_in), min(n_out, n_in), generator=generator)
        q, r = torch.linalg.qr(g)
        q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1)).unsqueeze(-2)
        w = q if n_out >= n_in else q.transpose(-1, -2)
        w = w[:, :n_out, :n_in].contiguous()
    else:
        raise ValueError(f"unknown init scheme {scheme!r}; known: {', '.join(INITS)}")
    return w * scale


class LayeredPopulation:
    """What every population architecture shares: M networks as a stack of layers.

    Subclasses hold ``weights``/``biases`` (lists, network index first) and implement
    ``broadcast_input``, ``layer_pre(layer, h_prev)`` and ``layer_post(layer, a, h_prev)``.
    """

    weights: list[torch.Tensor]
    biases: list[torch.Tensor]

    @property
    def n_layers(self) -> int:
        return len(self.weights)

    @property
    def device(self) -> torch.device:
        return self.weights[0].device

    def parameters(self) -> list[torch.Tensor]:
        return [*self.weights, *self.biases]

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Return ``(pre, post)``: ``pre[l] = a_{l+1}`` and ``post[l] = h_l`` with ``post[0] = x``
        and ``post[-1]`` the logits (``== pre[-1]``)."""
        h = self.broadcast_input(x)
        pre, post = [], [h]
        for layer in range(self.n_layers):
            a = self.layer_pre(layer, h)
            h = self.layer_post(layer, a, h)
            pre.append(a)
            post.append(h)
        return pre, post

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward(x)[1][-1]

    def state_dict(self) -> dict[str, torch.Tensor]:
        out = {f"weight.{i}": w for i, w in enumerate(self.weights)}
        out.update({f"bias.{i}": b for i, b in enumerate(self.biases)})
        return out


class DenseStack(LayeredPopulation):
    """M dense networks with layer sizes ``sizes = [n_0, n_1, ..., n_L]``.

    ``weights[l]`` is ``(M, n_{l+1}, n_l)`` and ``biases[l]`` ``(M, n_{l+1})`` for the
    ``L = len(sizes) - 1`` layers; the last layer is the linear readout.
    """

    def __init__(
        self,
        sizes: Sequence[int],
        m: int,
        *,
        activation: str = "relu",
        residual: bool = False,
        init: str = "default",
        init_scale: float = 1.0,
        generator: torch.Generator | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ):
        if len(sizes) < 2:
            raise ValueError("sizes needs at least an input and an output size")
        self.sizes = [int(s) for s in sizes]
        self.m = int(m)
        self.activation = Activation(activation)
        self.residual = bool(residual)
        gen = generator if generator is not None else torch.Generator().manual_seed(0)
        self.weights: list[torch.Tensor] = []
        self.biases: list[torch.Tensor] = []
        for n_in, n_out in zip(self.sizes[:-1], self.sizes[1:]):
            w = init_weight(self.m, n_out, n_in, init, init_scale, gen)
            if init == "default":
                bound = 1.0 / math.sqrt(n_in)
                b = (torch.rand(self.m, n_out, generator=gen) * 2 - 1) * bound
            else:
                b = torch.zeros(self.m, n_out)
            self.weights.append(w.to(device=device, dtype=dtype))
            self.biases.append(b.to(device=device, dtype=dtype))

    def is_skip(self, layer: int) -> bool:
        """Whether hidden layer ``layer`` (0-based over weights) adds its input back (resmlp)."""
        return (
            self.residual
            and layer < self.n_layers - 1
            and self.sizes[layer] == self.sizes[layer + 1]
        )

    def broadcast_input(self, x: torch.Tensor) -> torch.Tensor:
        """(B, n_0) shared by all networks, or (M, B, n_0) per network -> (M, B, n_0)."""
        if x.dim() == 2:
            return x.unsqueeze(0).expand(self.m, -1, -1)
        return x

    def layer_pre(self, layer: int, h_prev: torch.Tensor) -> torch.Tensor:
        """a = h_prev W^T + b, batched over networks."""
        return torch.baddbmm(
            self.biases[layer].unsqueeze(1), h_prev, self.weights[layer].transpose(1, 2)
        )

    def layer_post(self, layer: int, a: torch.Tensor, h_prev: torch.Tensor) -> torch.Tensor:
        if layer == self.n_layers - 1:
            return a
        h = self.activation.f(a)
        return h_prev + h if self.is_skip(layer) else h


def per_example_ce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy per example: logits (M, B, C), y (B,) or (M, B) -> (M, B)."""
    m, b, c = logits.shape
    if y.dim() == 1:
        y = y.unsqueeze(0).expand(m, -1)
    return torch.nn.functional.cross_entropy(
        logits.reshape(m * b, c), y.reshape(m * b), reduction="none"
    ).reshape(m, b)


def cross_entropy_per_network(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the batch for each network: logits (M, B, C), y (B,) or (M, B)."""
    return per_example_ce(logits, y).mean(dim=1)


def output_error(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """dL/dz of the batch-mean cross-entropy: (softmax(z) - onehot(y)) / B, shape (M, B, C)."""
    m, b, c = logits.shape
    if y.dim() == 1:
        y = y.unsqueeze(0).expand(m, -1)
    onehot = torch.nn.functional.one_hot(y, c).to(logits.dtype)
    return (torch.softmax(logits, dim=-1) - onehot) / b
