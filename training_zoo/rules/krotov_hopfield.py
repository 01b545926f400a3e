"""Krotov & Hopfield 2019: unsupervised learning by competing hidden units."""

from __future__ import annotations

import torch

from training_zoo.rules.base import Variant
from training_zoo.rules.hebbian import CompetitiveHebbian
from training_zoo.rules.registry import register


@register
class KrotovHopfield(CompetitiveHebbian):
    r"""Competing hidden units with rank-k anti-Hebbian learning (Krotov & Hopfield 2019, PNAS).

    Each hidden unit :math:`\mu` with weights :math:`W_\mu` receives, for an input (receptive
    field) :math:`v`, the current in the metric of the :math:`p`-norm,

    .. math::
        I_\mu = \sum_i \mathrm{sign}(W_{\mu i})\,|W_{\mu i}|^{p-1}\,v_i .

    Global inhibition ranks the units by current: the strongest gets :math:`g = 1`, the
    ``rank``-th strongest :math:`g = -\Delta` (``anti_hebbian``), all others 0. The plasticity,
    summed over the batch (and over positions in a conv layer), is

    .. math::
        \Delta W_{\mu i} = \sum_b g_{\mu b}\,\bigl(v_{bi} - I_{\mu b}\,W_{\mu i}\bigr),

    whose fixed points have unit :math:`p`-norm. As in the authors' code the step is divided by
    its largest entry and the rate is annealed linearly to zero over the unsupervised phase:

    .. math::
        W \leftarrow W + \epsilon_0\Bigl(1 - \frac{t}{T}\Bigr)\,\frac{\Delta W}{\max|\Delta W|},

    so the descent direction is :math:`-(1 - t/T)\,\Delta W/\max|\Delta W|` (per network and
    layer; the optimizer's rate plays :math:`\epsilon_0`), :math:`t` the examples seen and
    :math:`T` the phase length. The hidden layers have no biases. After the unsupervised phase
    the hidden layers are frozen and the readout is trained on their features (see
    :class:`training_zoo.rules.hebbian.CompetitiveHebbian`; the paper trains it by gradient
    descent, here with the cross-entropy of the zoo's linear readout).

    Input centring (``centre="all"``, see
    :class:`~training_zoo.rules.hebbian.CompetitiveHebbian`): every layer's input is centred on
    its running mean, folded into the bias. The paper has one hidden layer on raw pixels; here
    deeper layers see rectified, all-positive inputs on which the competition collapses onto
    their mean, and the zoo's small widths (32 units rather than 2000) leave too few
    prototypes on uncentred data (digits, 2 x 32 relu, 5 epochs: 0.10-0.24 test accuracy
    with ``centre="none"``, 0.90 centred; the readout-only baseline 0.81).
    ``centre="none"`` is the bare rule.

    Defaults are the authors' MNIST code: :math:`p = 3`, ``rank`` k = 7, :math:`\Delta = 0.4`.
    """

    id = "krotov_hopfield"
    reference = "Krotov & Hopfield 2019, PNAS 116:7723 (Unsupervised learning by competing hidden units)"
    description = "Krotov-Hopfield: p-norm competing hidden units, rank-k anti-Hebbian, annealed max-normalised step; readout afterwards"
    variants = {
        "default": Variant("The authors' MNIST code: p = 3, k = 7, Delta = 0.4, readout trained afterwards."),
        "euclidean": Variant("p = 2 (Euclidean weight norm), k = 2: the Euclidean case the paper also "
                             "analyses, used by several reimplementations.",
                             {"p": 2.0, "rank": 2}),
        "concurrent_readout": Variant("Readout trained alongside the unsupervised phase (a linear probe "
                                      "from the first step), as in online reimplementations.",
                                      {"concurrent_readout": True}),
    }

    def __init__(self, p: float = 3.0, rank: int = 7, anti_hebbian: float = 0.4, anneal: bool = True,
                 hidden_examples: int = 2000, concurrent_readout: bool = False, hidden_fraction: float = 0.3,
                 centre: str = "all", centre_decay: float = 0.9, readout_scale: float = 1.0):
        super().__init__(hidden_examples, concurrent_readout, hidden_fraction, centre, centre_decay, readout_scale)
        if p < 2:
            raise ValueError(f"p must be >= 2, got {p}")
        if rank < 1:
            raise ValueError(f"rank must be >= 1, got {rank}")
        self.p = float(p)
        self.rank = int(rank)
        self.anti_hebbian = float(anti_hebbian)
        self.anneal = bool(anneal)

    def plasticity(self, state, layer, v, w):
        metric = torch.sign(w) * w.abs().pow(self.p - 1.0)
        current = torch.bmm(v, metric.transpose(1, 2))  # (M, N, n)
        k = min(self.rank, current.shape[-1])
        order = current.topk(k, dim=-1).indices
        g = torch.zeros_like(current)
        if k > 1:
            g.scatter_(-1, order[..., k - 1 : k], -self.anti_hebbian)
        g.scatter_(-1, order[..., :1], 1.0)
        ds = torch.bmm(g.transpose(1, 2), v) - (g * current).sum(1).unsqueeze(-1) * w
        ds = ds / ds.abs().amax(dim=(1, 2), keepdim=True).clamp_min(1e-30)
        rate = max(0.0, 1.0 - self.progress(state)) if self.anneal else 1.0
        return -rate * ds
