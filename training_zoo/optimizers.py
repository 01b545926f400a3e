"""Batched optimizers: apply a rule's descent directions to M networks at once.

The optimizer is a separate label from the rule (see DESIGN.md). Every optimizer takes a
per-network learning rate ``lr`` of shape (M,) and parameters with the network index first.
With ``d`` the direction a rule returned for parameter ``p``:

    sgd:       p <- p - lr * d
    momentum:  v <- mu * v + d;                         p <- p - lr * v        (torch.optim.SGD)
    adam:      m <- b1 m + (1 - b1) d;  v <- b2 v + (1 - b2) d^2
               p <- p - lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)   (torch.optim.Adam)

A ``frozen`` mask (M,) bool stops the listed networks (diverged ones) from moving.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from rulefinder.vocabulary import OPTIMIZERS



def _per_network(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.view(-1, *([1] * (like.dim() - 1)))


class PopulationOptimizer:
    """Base: holds parameters (list of tensors, updated in place) and per-network lr (M,)."""

    name = ""

    def __init__(self, params: Sequence[torch.Tensor], lr):
        self.params = list(params)
        m = self.params[0].shape[0]
        dev, dt = self.params[0].device, self.params[0].dtype
        lr_t = torch.as_tensor(lr, dtype=dt, device=dev)
        self.lr = lr_t.expand(m).clone() if lr_t.dim() == 0 else lr_t.reshape(m).clone()
        self.t = 0

    def _effective_lr(self, frozen: torch.Tensor | None) -> torch.Tensor:
        return self.lr if frozen is None else torch.where(frozen, torch.zeros_like(self.lr), self.lr)

    @torch.no_grad()
    def step(self, directions: Sequence[torch.Tensor], frozen: torch.Tensor | None = None) -> None:
        raise NotImplementedError


class SGD(PopulationOptimizer):
    name = "sgd"

    @torch.no_grad()
    def step(self, directions, frozen=None):
        self.t += 1
        lr = self._effective_lr(frozen)
        for p, d in zip(self.params, directions):
            p.addcmul_(_per_network(lr, p), d, value=-1.0)  # one in-place pass, no temporary


class Momentum(PopulationOptimizer):
    name = "momentum"

    def __init__(self, params, lr, momentum: float = 0.9):
        super().__init__(params, lr)
        self.momentum = float(momentum)
        self.buf = [torch.zeros_like(p) for p in self.params]

    @torch.no_grad()
    def step(self, directions, frozen=None):
        self.t += 1
        lr = self._effective_lr(frozen)
        for p, d, v in zip(self.params, directions, self.buf):
            if self.t == 1:
                v.copy_(d)
            else:
                v.mul_(self.momentum).add_(d)
            p.addcmul_(_per_network(lr, p), v, value=-1.0)


class Adam(PopulationOptimizer):
    name = "adam"

    def __init__(self, params, lr, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        super().__init__(params, lr)
        self.b1, self.b2 = (float(b) for b in betas)
        self.eps = float(eps)
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]

    @torch.no_grad()
    def step(self, directions, frozen=None):
        self.t += 1
        lr = self._effective_lr(frozen)
        c1, c2 = 1.0 - self.b1**self.t, 1.0 - self.b2**self.t
        for p, d, m, v in zip(self.params, directions, self.m, self.v):
            m.mul_(self.b1).add_(d, alpha=1.0 - self.b1)
            v.mul_(self.b2).addcmul_(d, d, value=1.0 - self.b2)
            denom = (v / c2).sqrt_().add_(self.eps)
            p.addcmul_(_per_network(lr / c1, p), m / denom, value=-1.0)


def make_optimizer(name: str, params: Sequence[torch.Tensor], lr, **kwargs) -> PopulationOptimizer:
    """``name`` in :data:`OPTIMIZERS`; ``lr`` a float or a (M,) tensor."""
    cls = {"sgd": SGD, "momentum": Momentum, "adam": Adam}.get(name)
    if cls is None:
        raise ValueError(f"unknown optimizer {name!r}; known: {', '.join(OPTIMIZERS)}")
    return cls(params, lr, **kwargs)
