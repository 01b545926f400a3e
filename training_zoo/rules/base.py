"""The learning-rule interface, in the style of ``torch.optim``: one small class per rule.

A rule turns a batch into a *descent direction* for every parameter of a population of
networks (same shapes as the parameters, network index first). The population trainer hands
that direction to the optimizer (``sgd``, ``momentum`` or ``adam``, a separate label), which
applies ``p <- p - lr * opt(direction)``. For backprop the direction is the gradient of the
loss; other rules produce their own. Rules with auxiliary state (feedback matrices, ...) keep
it in the ``state`` dict made by :meth:`LearningRule.init_state`, and update it themselves
inside :meth:`LearningRule.step` (that update is part of the rule, not of the optimizer).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch


@dataclass(frozen=True)
class Variant:
    """One implementation variant of a rule: a set of choices on which published
    implementations of the rule differ and which are not the rule itself (feedback scale,
    output non-linearity and loss, readout, relaxation steps, ...).

    ``kwargs`` are constructor arguments of the rule class; ``description`` says whose
    implementation (paper or code base) makes these choices.
    """

    description: str
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class RuleStep:
    """What one call of :meth:`LearningRule.step` returns.

    ``weights[l]``/``biases[l]``: descent directions with the shapes of the network's
    ``weights[l]``/``biases[l]``. ``loss``: (M,) training loss of the batch before the update.
    """

    weights: list[torch.Tensor]
    biases: list[torch.Tensor]
    loss: torch.Tensor
    extras: dict[str, torch.Tensor] = field(default_factory=dict)


class LearningRule:
    """Base class. Subclasses set the class attributes and implement :meth:`step`.

    Class attributes:
        id: stable string id (``feedback_alignment``); never changes once published.
        family: family id (``feedback_alignment``, ``energy_based``, ...).
        reference: short citation of the paper the rule comes from.
        description: one line for the catalogue.
        supports: architecture family ids the rule is implemented for (``mlp``, ``resmlp``, ``cnn``).
        variants: implementation variant id -> :class:`Variant`; ``"default"`` is the rule as
            its paper defines it and is always present. Zoo specs sample a variant per shard;
            evaluation holds variants out.
    """

    id: ClassVar[str] = ""
    family: ClassVar[str] = ""
    reference: ClassVar[str] = ""
    description: ClassVar[str] = ""
    supports: ClassVar[tuple[str, ...]] = ()
    variants: ClassVar[dict[str, Variant]] = {"default": Variant("The rule as its paper defines it.")}

    @classmethod
    def from_variant(cls, variant: str = "default", **overrides: Any) -> "LearningRule":
        """An instance with ``variant``'s constructor arguments, then ``overrides`` on top."""
        if variant not in cls.variants:
            raise KeyError(f"rule {cls.id!r} has no variant {variant!r}; known: {', '.join(cls.variants)}")
        return cls(**{**cls.variants[variant].kwargs, **overrides})

    def hyperparameters(self) -> dict[str, Any]:
        """Constructor arguments, for metadata (every rule stores its hyperparameters as attributes)."""
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}

    def init_state(self, net, generator: torch.Generator) -> dict[str, Any]:
        """Auxiliary per-population state (e.g. fixed random feedback weights). Default: none."""
        return {}

    def step(self, net, state: dict[str, Any], x: torch.Tensor, y: torch.Tensor) -> RuleStep:
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.hyperparameters().items())
        return f"{type(self).__name__}({args})"


class StochasticRule(LearningRule):
    """A rule whose step draws random numbers (perturbations, action choices, negative data).

    Subclasses implement ``sample_noise(net, state, batch)`` and ``step_with_noise(net, state,
    x, y, noise)``; keeping the draw separate lets tests replay a step with given noise.
    """

    def sample_noise(self, net, state: dict[str, Any], batch: int):
        raise NotImplementedError

    def step_with_noise(self, net, state: dict[str, Any], x: torch.Tensor, y: torch.Tensor, noise) -> RuleStep:
        raise NotImplementedError

    def step(self, net, state: dict[str, Any], x: torch.Tensor, y: torch.Tensor) -> RuleStep:
        x = net.broadcast_input(x)
        # the batch size from the labels: the input's layout differs between families
        # (mlp (M, B, n), cnn (B, C, H, W))
        return self.step_with_noise(net, state, x, y, self.sample_noise(net, state, y.shape[-1]))
