"""Hebbian learning: competing hidden units (SoftHebb; Krotov & Hopfield 2019) under a delta-rule readout."""

from __future__ import annotations

import torch

from training_zoo.rules.base import LearningRule, RuleStep
from training_zoo.dense import per_example_ce
from training_zoo.rules.registry import register


@register
class Hebbian(LearningRule):
    r"""Unsupervised, local Hebbian hidden layers with a supervised local readout.

    Hidden layers, ``plasticity="softhebb"`` (default): soft winner-take-all competitive
    Hebbian learning (SoftHebb, Moraitis et al. 2022; the prototype learning of Krotov &
    Hopfield 2019). Each hidden layer sees its input :math:`v = h_{l-1}` (for ``resmlp`` the
    skip's input; the identity skip has no plastic weights) centred on a running mean and
    each example normalised:

    .. math::
        \mu \leftarrow \lambda\mu + (1-\lambda)\,\mathrm{mean}_b v_b,\qquad
        c_b = v_b - \mu,\qquad
        P \leftarrow \lambda P + (1-\lambda)\,\mathrm{mean}_b \lVert c_b\rVert^2,\qquad
        \hat c_b = c_b / \lVert c_b\rVert

    (``trace_decay`` :math:`\lambda`; the first batch initialises :math:`\mu, P`). With the
    target row norm :math:`r = \rho/\sqrt{P}` (``norm`` :math:`\rho`: a unit's centred current
    :math:`w_i\cdot c` is then about :math:`\rho\cos`), the cosines
    :math:`s_{bi} = w_i\cdot\hat c_b / r` compete through a softmax with temperature
    :math:`\tau` (``tau``), :math:`g_{bi} = \mathrm{softmax}_i(s_{b\cdot}/\tau)`, and each unit
    moves towards the inputs it wins, with an Oja-type decay that fixes :math:`\lVert w_i\rVert
    = r`:

    .. math::
        H_i = \frac{1}{B}\sum_b g_{bi}\,\bigl(r\,\hat c_b - s_{bi}\,w_i\bigr),\qquad
        \Delta W_i \propto \frac{H_i}{\bar g_i + 1/n},\quad \bar g_i = \frac{1}{B}\sum_b g_{bi}

    (``unit_normalise``: each unit's step is divided by its share of the batch, so units that
    win rarely still learn and neither sgd's nor Adam's scaling leaves any of them behind;
    :math:`n` units). The rows converge to prototypes (soft cluster means) of the centred input
    directions. Thresholds: the bias tracks a target that centres the current on the input
    mean and lets a unit fire above ``threshold`` :math:`\kappa` RMS of its centred current,

    .. math::
        b_i^{*} = -w_i\cdot\mu - \kappa\,\sqrt{\mathrm{mean}_b (w_i\cdot c_b)^2},\qquad
        \text{direction } (b_i - b_i^{*}),

    so :math:`h = f(W v + b) = f(W(v-\mu) - \kappa\,\sigma)`: sparse, nonlinear ReLU features.

    ``plasticity="sanger"`` (Oja's rule generalised to a layer, Sanger
    1989). With :math:`v = h_{l-1}` the layer's input and :math:`y = W_l v` the synaptic
    currents (without bias), Oja/Sanger plasticity is
    :math:`\Delta W \propto y v^\top - \mathrm{LT}(y y^\top)\,W` (LT: lower triangle incl.
    diagonal: unit i is decorrelated from units j <= i); its rows converge to the principal
    axes of the input, with unit norm. The products enter through slow eligibility traces,
    :math:`\overline{X} \leftarrow \lambda\overline{X} + (1-\lambda)\,\mathrm{mean}_b X` for
    :math:`X \in \{y v^\top, y y^\top, \lVert v\rVert^2\}` (``trace_decay`` :math:`\lambda`; the
    first batch initialises them), and the update is

    .. math::
        \Delta W_l \propto \frac{\overline{y v^\top} - \mathrm{LT}(\overline{y y^\top})\,W}
        {\overline{\lVert v\rVert^2}},

    normalised by the input power so the step is stable at any input scale.

    ``plasticity="krotov_hopfield"`` (Krotov & Hopfield 2019, p = 2): units ranked by current
    :math:`I_\mu = \langle W_\mu, v\rangle`; the winner gets :math:`g = 1`, the unit ranked
    ``rank`` gets :math:`g = -\Delta` (``anti_hebbian``), others 0 (``temperature > 0``: soft
    winner-take-all :math:`g = \mathrm{softmax}(I/T)` instead), and
    :math:`\Delta W_\mu \propto \mathrm{mean}_b\, g_{\mu b}(v_b - I_{\mu b} W_\mu)`.

    For sanger and krotov_hopfield the biases are homeostatic thresholds (intrinsic
    plasticity): a unit active (:math:`a > 0`) more often than ``target_rate`` raises its
    threshold, :math:`\Delta b_\mu \propto \text{target} - \text{rate}_\mu`. For ``resmlp`` the
    rule acts on each layer's branch weights with that layer's input :math:`h_{l-1}`; the
    identity skip has no plastic weights.

    Readout (delta rule): :math:`\Delta W_L \propto (y - \mathrm{softmax}(z))\,h_{L-1}^\top`.

    Returned descent directions are minus these updates (batch means), the hidden weights'
    scaled by ``hebbian_scale``, the thresholds' by ``homeostasis_scale`` (``None``: the same).
    """

    id = "hebbian"
    family = "hebbian"
    reference = "Moraitis et al. 2022 (SoftHebb); Krotov & Hopfield 2019, PNAS; Sanger 1989; Oja 1982"
    description = "Hebbian: soft winner-take-all (SoftHebb) hidden layers, centred thresholds, delta-rule readout"
    supports = ("mlp", "resmlp")

    def __init__(self, rank: int = 2, anti_hebbian: float = 0.4, target_rate: float = 0.8,
                 hebbian_scale: float | None = None, temperature: float = 0.0, plasticity: str = "softhebb",
                 trace_decay: float = 0.9, homeostasis_scale: float | None = 0.1,
                 tau: float = 0.005, norm: float = 8.0, threshold: float = 0.3,
                 unit_normalise: bool = True):
        if plasticity not in ("softhebb", "krotov_hopfield", "sanger"):
            raise ValueError("plasticity must be 'softhebb', 'krotov_hopfield' or 'sanger'")
        self.plasticity = plasticity
        self.trace_decay = float(trace_decay)
        self.homeostasis_scale = None if homeostasis_scale is None else float(homeostasis_scale)
        self.rank = int(rank)
        self.anti_hebbian = float(anti_hebbian)
        self.target_rate = float(target_rate)
        # None: 0.1 for softhebb (its per-unit normalised step), 1.0 for sanger / krotov_hopfield
        if hebbian_scale is None:
            hebbian_scale = 0.1 if plasticity == "softhebb" else 1.0
        self.hebbian_scale = float(hebbian_scale)
        self.temperature = float(temperature)
        self.tau = float(tau)
        self.norm = float(norm)
        self.threshold = float(threshold)
        self.unit_normalise = bool(unit_normalise)

    def init_state(self, net, generator):
        # layer -> running (input mean, centred input power) for softhebb; eligibility traces
        # (y v^T, y y^T, |v|^2) for sanger
        return {"centres": {}, "traces": {}}

    def _softhebb(self, state, layer, v, w, bias):
        """SoftHebb plasticity of one hidden layer (see the class docstring); returns (dW, db)."""
        lam = self.trace_decay
        b = v.shape[1]
        centres = state.setdefault("centres", {})
        mu = v.mean(1)
        if layer in centres:
            mu = lam * centres[layer][0] + (1.0 - lam) * mu
        c = v - mu.unsqueeze(1)
        power = (c**2).sum(-1).mean(-1)
        if layer in centres:
            power = lam * centres[layer][1] + (1.0 - lam) * power
        centres[layer] = (mu, power)
        r = (self.norm / power.clamp_min(1e-12).sqrt()).view(-1, 1, 1)  # target row norm
        cn = c / c.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        s = torch.bmm(cn, w.transpose(1, 2)) / r  # cosines once |w_i| = r
        g = torch.softmax(s / self.tau, dim=-1)
        hebb = (torch.bmm(g.transpose(1, 2), cn) * r - (g * s).sum(1).unsqueeze(-1) * w) / b
        if self.unit_normalise:
            hebb = hebb / (g.mean(1).unsqueeze(-1) + 1.0 / w.shape[1])
        dw = -hebb * self.hebbian_scale
        # threshold: centre the current on the running input mean, fire above kappa std
        centred = torch.bmm(c, w.transpose(1, 2))
        target = -(w @ mu.unsqueeze(-1)).squeeze(-1) - self.threshold * centred.pow(2).mean(1).sqrt()
        hs = self.hebbian_scale if self.homeostasis_scale is None else self.homeostasis_scale
        db = (bias - target) * hs
        return dw, db

    def step(self, net, state, x, y):
        x = net.broadcast_input(x)
        pre, post = net.forward(x)
        m, b, c = post[-1].shape
        dws, dbs = [], []
        for layer in range(net.n_layers - 1):
            v, w = post[layer], net.weights[layer]
            current = torch.bmm(v, w.transpose(1, 2))  # (M, B, n)
            if self.plasticity == "softhebb":
                dw, db = self._softhebb(state, layer, v, w, net.biases[layer])
                dws.append(dw)
                dbs.append(db)
                continue
            if self.plasticity == "sanger":
                # generalised Hebbian algorithm: rows of W -> principal axes of the input
                # eligibility traces of the Hebbian products y v^T, y y^T and of the input power
                stats = (torch.bmm(current.transpose(1, 2), v) / b,
                         torch.bmm(current.transpose(1, 2), current) / b,
                         (v**2).sum(-1).mean(-1))
                traces = state.setdefault("traces", {})
                if layer in traces:
                    stats = tuple(self.trace_decay * old + (1.0 - self.trace_decay) * new
                                  for old, new in zip(traces[layer], stats))
                traces[layer] = stats
                yv, yy, power = stats
                hebb = yv - torch.bmm(torch.tril(yy), w)
                # normalised by the input power so the step is stable at any input scale
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
