"""Hebbian learning: competing hidden units (Krotov & Hopfield 2019) under a delta-rule readout."""

from __future__ import annotations

import torch

from training_zoo.rules.base import LearningRule, RuleStep
from training_zoo.rules.node_perturbation import per_example_ce
from training_zoo.rules.registry import register


@register
class Hebbian(LearningRule):
    r"""Unsupervised, local Hebbian hidden layers with a supervised local readout.

    Hidden layers, ``plasticity="sanger"`` (default; Oja's rule generalised to a layer, Sanger
    1989). With :math:`v = h_{l-1}` the layer's input and :math:`y = W_l v` the synaptic
    currents (without bias), Oja/Sanger plasticity is
    :math:`\Delta W \propto y v^\top - \mathrm{LT}(y y^\top)\,W` (LT: lower triangle incl.
    diagonal: unit i is decorrelated from units j <= i); its rows converge to the principal
    axes of the input, with unit norm. The correlations enter through a slow synaptic trace
    :math:`C \leftarrow \lambda C + (1-\lambda)\,\mathrm{mean}_b(v v^\top)` (``trace_decay``
    :math:`\lambda`; the first batch initialises it), so the expected update is

    .. math::
        \Delta W_l \propto \frac{W C - \mathrm{LT}(W C W^\top)\,W}{\mathrm{tr}\,C},

    normalised by the input power so the step is stable at any input scale (``power_norm``:
    the trace of C, or its Frobenius norm, close to the top eigenvalue, which speeds up the
    minor components).

    ``plasticity="krotov_hopfield"`` (Krotov & Hopfield 2019, p = 2): units ranked by current
    :math:`I_\mu = \langle W_\mu, v\rangle`; the winner gets :math:`g = 1`, the unit ranked
    ``rank`` gets :math:`g = -\Delta` (``anti_hebbian``), others 0 (``temperature > 0``: soft
    winner-take-all :math:`g = \mathrm{softmax}(I/T)` instead), and
    :math:`\Delta W_\mu \propto \mathrm{mean}_b\, g_{\mu b}(v_b - I_{\mu b} W_\mu)`.

    Biases are homeostatic thresholds (intrinsic plasticity): a unit active (:math:`a > 0`) more
    often than ``target_rate`` raises its threshold, :math:`\Delta b_\mu \propto
    \text{target} - \text{rate}_\mu`. For ``resmlp`` the rule acts on each layer's branch
    weights with that layer's input :math:`h_{l-1}`; the identity skip has no plastic weights.

    Readout (delta rule): :math:`\Delta W_L \propto (y - \mathrm{softmax}(z))\,h_{L-1}^\top`.

    Returned descent directions are minus these updates (batch means), the hidden weights'
    scaled by ``hebbian_scale``, the thresholds' by ``homeostasis_scale`` (``None``: the same).
    """

    id = "hebbian"
    family = "hebbian"
    reference = "Sanger 1989, Neural Networks; Oja 1982; Krotov & Hopfield 2019, PNAS"
    description = "Hebbian: Oja/Sanger (or Krotov-Hopfield) hidden layers, homeostatic thresholds, delta-rule readout"
    supports = ("mlp", "resmlp")

    def __init__(self, rank: int = 2, anti_hebbian: float = 0.4, target_rate: float = 0.8,
                 hebbian_scale: float = 1.0, temperature: float = 0.0, plasticity: str = "sanger",
                 trace_decay: float = 0.9, power_norm: str = "trace", homeostasis_scale: float | None = 0.1):
        if plasticity not in ("krotov_hopfield", "sanger"):
            raise ValueError("plasticity must be 'krotov_hopfield' or 'sanger'")
        self.plasticity = plasticity
        self.trace_decay = float(trace_decay)
        if power_norm not in ("trace", "frobenius"):
            raise ValueError("power_norm must be 'trace' or 'frobenius'")
        self.power_norm = power_norm
        self.homeostasis_scale = None if homeostasis_scale is None else float(homeostasis_scale)
        self.rank = int(rank)
        self.anti_hebbian = float(anti_hebbian)
        self.target_rate = float(target_rate)
        self.hebbian_scale = float(hebbian_scale)
        self.temperature = float(temperature)

    def init_state(self, net, generator):
        return {"correlation": {}}  # layer -> slow trace of its input correlations (sanger)

    def step(self, net, state, x, y):
        x = net.broadcast_input(x)
        pre, post = net.forward(x)
        m, b, c = post[-1].shape
        dws, dbs = [], []
        for layer in range(net.n_layers - 1):
            v, w = post[layer], net.weights[layer]
            current = torch.bmm(v, w.transpose(1, 2))  # (M, B, n)
            if self.plasticity == "sanger":
                # generalised Hebbian algorithm on a slow trace of the input correlations:
                # E[y v^T] - LT(E[y y^T]) W = W C - LT(W C W^T) W, rows -> principal axes
                cov = torch.bmm(v.transpose(1, 2), v) / b
                traces = state.setdefault("correlation", {})
                if layer in traces:
                    cov = self.trace_decay * traces[layer] + (1.0 - self.trace_decay) * cov
                traces[layer] = cov
                wc = torch.bmm(w, cov)
                hebb = wc - torch.bmm(torch.tril(torch.bmm(wc, w.transpose(1, 2))), w)
                # normalised by the input power so the step is stable at any input scale
                if self.power_norm == "frobenius":  # ~ the top eigenvalue: faster minor components
                    power = torch.linalg.matrix_norm(cov)
                else:
                    power = torch.diagonal(cov, dim1=-2, dim2=-1).sum(-1)
                power = power.clamp_min(1e-12).view(-1, 1, 1)
                dws.append(-hebb * self.hebbian_scale / power)
                rate = (pre[layer] > 0).to(v.dtype).mean(1)
                hs = self.hebbian_scale if self.homeostasis_scale is None else self.homeostasis_scale
                dbs.append((rate - self.target_rate) * hs)
                continue
            if self.temperature > 0:
                g = torch.softmax(current / self.temperature, dim=-1)
            else:
                k = min(self.rank, current.shape[-1])
                order = current.topk(k, dim=-1).indices
                g = torch.zeros_like(current)
                if k > 1:
                    g.scatter_(-1, order[..., k - 1 : k], -self.anti_hebbian)
                g.scatter_(-1, order[..., :1], 1.0)
            hebb = torch.bmm(g.transpose(1, 2), v) - (g * current).sum(1).unsqueeze(-1) * w
            dws.append(-hebb * (self.hebbian_scale / b))
            rate = (pre[layer] > 0).to(v.dtype).mean(1)
            hs = self.hebbian_scale if self.homeostasis_scale is None else self.homeostasis_scale
            dbs.append((rate - self.target_rate) * hs)
        err = torch.softmax(post[-1], -1) - torch.nn.functional.one_hot(
            y.unsqueeze(0).expand(m, -1) if y.dim() == 1 else y, c
        ).to(post[-1].dtype)
        dws.append(torch.bmm(err.transpose(1, 2), post[-2]) / b)
        dbs.append(err.mean(1))
        return RuleStep(weights=dws, biases=dbs, loss=per_example_ce(post[-1], y).mean(1))
