"""Hebbian learning: SoftHebb (Journé et al. 2023) soft winner-take-all hidden layers, then a readout.

Also the machinery every competitive Hebbian rule here shares (:class:`CompetitiveHebbian`):
the receptive fields a hidden unit sees (its input vector in a dense layer, every image patch
in a conv layer), the unsupervised phase followed by a readout trained on the frozen features,
and hidden layers without biases. :mod:`training_zoo.rules.krotov_hopfield` builds on it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from training_zoo.architectures import PopulationCNN, unit_view
from training_zoo.dense import per_example_ce
from training_zoo.rules.base import LearningRule, RuleStep, Variant
from training_zoo.rules.registry import register


def receptive_fields(net, layer: int, h: torch.Tensor) -> torch.Tensor:
    """The input vectors that the units of ``layer`` see, as (M, N, fan_in).

    Dense layers (and the CNN readout): one vector per example, N = B. Conv layers: one
    vector per example and output position (the image patch under the kernel, flattened as
    the kernel ``(C_in, k, k)`` is), N = B * positions, so ``W.reshape(C_out, -1) @ patch`` is
    the unit's current at that position and a Hebbian product summed over N is the conv
    layer's weight update.
    """
    if isinstance(net, PopulationCNN) and layer < net.n_conv:
        b = h.shape[0]
        cols = F.unfold(h, net.kernel, padding=net.padding, stride=net.stride)  # (B, [M] F, P)
        if layer == 0:  # shared input: every network sees the same patches
            cols = cols.unsqueeze(1).expand(b, net.m, *cols.shape[1:])
        else:  # channels are network-major blocks: (B, M*C*k*k, P) -> (B, M, C*k*k, P)
            cols = cols.reshape(b, net.m, -1, cols.shape[-1])
        fan_in, positions = cols.shape[2], cols.shape[3]
        return cols.permute(1, 0, 3, 2).reshape(net.m, b * positions, fan_in)
    v = unit_view(net, h)
    return v.expand(net.m, -1, -1) if v.shape[0] != net.m else v


def readout_delta_rule(net, post, y):
    """Delta-rule (= cross-entropy gradient) direction of the linear readout, and the loss."""
    z = post[-1]
    h = receptive_fields(net, net.n_layers - 1, post[-2])
    m, b, c = z.shape
    yy = y.unsqueeze(0).expand(m, -1) if y.dim() == 1 else y
    err = torch.softmax(z, -1) - F.one_hot(yy, c).to(z.dtype)
    return torch.bmm(err.transpose(1, 2), h) / b, err.mean(1), per_example_ce(z, y).mean(1)


CENTRE_MODES = ("none", "all", "above_first")


class CompetitiveHebbian(LearningRule):
    r"""Unsupervised competitive Hebbian hidden layers, then a supervised readout (not registered).

    Phases, as in Krotov & Hopfield 2019 and Journé et al. 2023: for the first
    ``hidden_examples`` training examples only the hidden layers learn, by the subclass's
    :meth:`plasticity`; after that they are frozen and the linear readout learns by the delta
    rule, :math:`\Delta W_L \propto (y - \mathrm{softmax}(z))\,h_{L-1}^\top` (the cross-entropy
    gradient of a linear classifier on frozen features). ``concurrent_readout`` trains the
    readout from the first step instead (a linear probe running alongside). The trainer sizes
    the unsupervised phase to the run through :meth:`plan`: ``hidden_fraction`` of its steps,
    so that a run of an epoch or less still trains its readout. ``hidden_examples`` applies
    only where nobody calls :meth:`plan` (a rule stepped by hand).

    Hidden layers have no biases of their own: :meth:`init_state` sets them to zero. With
    ``centre`` (``"all"`` layers or those ``"above_first"``) a layer's input is centred on its
    running mean :math:`\mu` (decay ``centre_decay``) before the plasticity sees it, and the
    bias tracks :math:`-W\mu` (direction :math:`b + W\mu`), so the forward pass computes
    :math:`W(v - \mu)`: the mean-subtracting batch normalisation in front of SoftHebb's layers,
    folded into the bias (the zoo's networks have no normalisation layers). Without it,
    rectified inputs are all positive and a competition on them collapses onto their mean.
    ``readout_scale`` multiplies the readout's direction (the two phases share the
    optimizer's rate; the papers train them with separate rates).
    ``resmlp``: the rule acts on each layer's branch weights with that layer's input
    :math:`h_{l-1}`; the identity skip has no plastic weights. ``cnn``: every output position
    of a conv layer is one competition among the layer's channels, on the input patch there
    (:func:`receptive_fields`).
    """

    family = "hebbian"
    supports = ("mlp", "resmlp", "cnn")

    def __init__(self, hidden_examples: int = 2000, concurrent_readout: bool = False,
                 hidden_fraction: float = 0.3, centre: str = "none", centre_decay: float = 0.9,
                 readout_scale: float = 1.0):
        if centre not in CENTRE_MODES:
            raise ValueError(f"centre must be one of {CENTRE_MODES}, got {centre!r}")
        self.hidden_examples = int(hidden_examples)
        self.concurrent_readout = bool(concurrent_readout)
        self.hidden_fraction = float(hidden_fraction)
        self.centre = centre
        self.centre_decay = float(centre_decay)
        self.readout_scale = float(readout_scale)

    def init_state(self, net, generator):
        with torch.no_grad():
            for b in net.biases[:-1]:
                b.zero_()
        return {"seen": 0, "hidden_examples": self.hidden_examples}

    def plan(self, state, total_steps: int, batch_size: int) -> None:
        """Optional trainer hook: the unsupervised phase is ``hidden_fraction`` of the run."""
        state["hidden_examples"] = int(round(self.hidden_fraction * total_steps)) * int(batch_size)

    def _centre(self, state, layer, v, w):
        """Input centred on its running mean mu (the layer's batch normalisation, folded into the
        bias): returns (v - mu, bias target -W mu)."""
        centres = state.setdefault("centres", {})
        mu = v.mean(1)
        if layer in centres:
            mu = self.centre_decay * centres[layer] + (1.0 - self.centre_decay) * mu
        centres[layer] = mu
        return v - mu.unsqueeze(1), -(w @ mu.unsqueeze(-1)).squeeze(-1)

    def progress(self, state) -> float:
        """Fraction of the unsupervised phase done before this batch (>= 1: phase over)."""
        return state["seen"] / max(state["hidden_examples"], 1)

    def plasticity(self, state, layer: int, v: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """Descent direction (M, n_out, fan_in) of one hidden layer from its receptive fields v."""
        raise NotImplementedError

    def step(self, net, state, x, y):
        pre, post = net.forward(x)
        hidden_on = self.progress(state) < 1.0
        dws = [torch.zeros_like(w) for w in net.weights]
        dbs = [torch.zeros_like(b) for b in net.biases]
        if hidden_on:
            for layer in range(net.n_layers - 1):
                w = net.weights[layer]
                wf = w.reshape(w.shape[0], w.shape[1], -1)
                v = receptive_fields(net, layer, post[layer])
                if self.centre == "all" or (self.centre == "above_first" and layer > 0):
                    v, target = self._centre(state, layer, v, wf)
                    dbs[layer] = net.biases[layer] - target
                dws[layer] = self.plasticity(state, layer, v, wf).reshape(w.shape)
        dw, db, loss = readout_delta_rule(net, post, y)
        if not hidden_on or self.concurrent_readout:
            dws[-1], dbs[-1] = dw * self.readout_scale, db * self.readout_scale
        state["seen"] += int(x.shape[0])
        return RuleStep(weights=dws, biases=dbs, loss=loss)


@register
class Hebbian(CompetitiveHebbian):
    r"""SoftHebb (Journé et al. 2023; Moraitis et al. 2022): soft winner-take-all Hebbian layers.

    For a hidden unit k with weights :math:`w_k` and input (receptive field) :math:`x`, the
    current is :math:`u_k = w_k\cdot x` and the soft winner-take-all output
    :math:`s_k = \mathrm{softmax}_k(u/\tau)` (``temperature`` :math:`\tau`; the code's
    ``t_invert`` is :math:`1/\tau`). Soft anti-Hebbian plasticity: the winner
    (:math:`\arg\max_k u_k`) keeps :math:`y_k = s_k`, every other unit gets :math:`y_k = -s_k`
    (``anti_hebbian=False``: all :math:`y_k = s_k`, Moraitis et al. 2022). The update, summed
    over the batch (and over positions in a conv layer), is

    .. math::
        \Delta w_k = \sum_b y_{bk}\,\bigl(x_b - u_{bk}\,w_k\bigr),

    an Oja-type rule whose fixed points have :math:`\lVert w_k\rVert = 1`. As in the authors'
    code the layer's step is divided by its largest entry, :math:`\Delta W / \max|\Delta W|`,
    and each unit's rate adapts to its weight norm :math:`r_k = \lVert w_k\rVert`,
    :math:`\eta_k \propto |r_k - 1|^{1/2}` (``norm_adaptive=False``: one rate for all), so
    units far from the unit sphere learn fast and converged units stop. The descent
    direction is :math:`-\eta_k\,\Delta w_k/\max|\Delta W|`, the optimizer's rate on top.

    Hidden layers have no biases of their own; each layer's input is centred on its running
    mean, the mean-subtracting part of the batch normalisation in front of every SoftHebb
    layer, folded into the bias (``centre="all"``; see :class:`CompetitiveHebbian`). The
    zoo's forward pass keeps its own activation (SoftHebb's triangle activation and pooling
    are not part of the zoo's architectures). After the unsupervised phase (``hidden_fraction``
    0.3 of the run's steps, about one epoch of a zoo run of 2-4 epochs, as Journé et al. train
    SoftHebb layers for one epoch) a linear readout is trained on the frozen features.

    Default temperature :math:`\tau = 0.1` (``t_invert`` 10): with the zoo's input scales the
    currents are O(1), and :math:`\tau = 1` leaves the competition too soft to form
    prototypes within the zoo's training lengths. Chosen on a validation split carved from the
    training data, never the test set (``benchmarks/rule_hyperparameters.py``; docs/rules.md,
    "Rule constants chosen on a validation split": :math:`\tau` in {0.01, 0.03, 0.1, 0.3, 1} on
    digits, mnist5k_14 and mnist1d, mlp and resmlp, three seeds): 0.01 and 0.03 score within
    noise of 0.1, 0.3 and 1 lower, so 0.1 stays.

    ``form="centred"`` (variant ``centred``) is this project's earlier form: inputs
    centred on a running mean and normalised, cosine competition with a target norm, a step
    divided by each unit's share of the batch and thresholds that track the centred current
    (see :meth:`_centred`).
    """

    id = "hebbian"
    reference = "Journé, Garcia Rodriguez, Guo & Moraitis 2023, ICLR (Hebbian deep learning without feedback); Moraitis et al. 2022"
    description = "SoftHebb: soft winner-take-all Hebbian hidden layers with soft anti-Hebbian losers, readout trained afterwards"
    variants = {
        "default": Variant("SoftHebb as Journé et al. 2023 and their code: soft anti-Hebbian losers, "
                           "step normalised by its maximum, norm-adaptive rate, readout after one epoch."),
        "plain_rate": Variant("The authors' simplified demo layer: one rate for all units (no norm-adaptive rate).",
                              {"norm_adaptive": False}),
        "hebbian_only": Variant("Moraitis et al. 2022's SoftHebb: every unit Hebbian with its softmax share "
                                "(no anti-Hebbian losers), readout trained alongside.",
                                {"anti_hebbian": False, "concurrent_readout": True}),
        "centred": Variant("This project's earlier SoftHebb form: centred, normalised inputs, per-unit "
                           "normalised step, centred thresholds, readout trained alongside.",
                           {"form": "centred", "concurrent_readout": True, "temperature": 0.005}),
    }

    def __init__(self, temperature: float = 0.1, anti_hebbian: bool = True, norm_adaptive: bool = True,
                 form: str = "softhebb", hidden_examples: int = 2000, concurrent_readout: bool = False,
                 hidden_fraction: float = 0.3, centre: str = "all", readout_scale: float = 1.0,
                 trace_decay: float = 0.9, norm: float = 8.0,
                 threshold: float = 0.3, centred_scale: float = 0.1, homeostasis_scale: float = 0.1):
        if form not in ("softhebb", "centred"):
            raise ValueError(f"form must be 'softhebb' or 'centred', got {form!r}")
        super().__init__(hidden_examples, concurrent_readout, hidden_fraction, centre, trace_decay, readout_scale)
        self.temperature = float(temperature)
        self.anti_hebbian = bool(anti_hebbian)
        self.norm_adaptive = bool(norm_adaptive)
        self.form = form
        self.trace_decay = float(trace_decay)
        self.norm = float(norm)
        self.threshold = float(threshold)
        self.centred_scale = float(centred_scale)
        self.homeostasis_scale = float(homeostasis_scale)

    def init_state(self, net, generator):
        if self.form == "centred":  # keeps its thresholds (they are biases)
            return {"seen": 0, "hidden_examples": self.hidden_examples, "centres": {}}
        return super().init_state(net, generator)

    def plasticity(self, state, layer, v, w):
        u = torch.bmm(v, w.transpose(1, 2))  # (M, N, n)
        s = torch.softmax(u / self.temperature, dim=-1)
        if self.anti_hebbian:
            winner = F.one_hot(u.argmax(-1), u.shape[-1]).to(u.dtype)
            y = s * (2.0 * winner - 1.0)
        else:
            y = s
        hebb = torch.bmm(y.transpose(1, 2), v) - (y * u).sum(1).unsqueeze(-1) * w
        hebb = hebb / hebb.abs().amax(dim=(1, 2), keepdim=True).clamp_min(1e-30)
        if self.norm_adaptive:
            hebb = hebb * ((w.norm(dim=-1, keepdim=True) - 1.0).abs() + 1e-10).sqrt()
        return -hebb

    def _centred(self, state, layer, v, w, bias):
        r"""This project's earlier SoftHebb form (variant ``centred``); returns (dW, db).

        Input centred on a running mean :math:`\mu` with running power :math:`P`
        (``trace_decay``), :math:`\hat c = c/\lVert c\rVert`, target norm
        :math:`r = \rho/\sqrt P` (``norm``), cosines :math:`s = w\cdot\hat c / r`, softmax
        :math:`g`, :math:`H_i = \mathrm{mean}_b\, g_{bi}(r\hat c_b - s_{bi} w_i)` divided by
        :math:`\bar g_i + 1/n`; bias target :math:`-w\cdot\mu - \kappa\,\mathrm{rms}(w\cdot c)`.
        """
        lam = self.trace_decay
        n_ex = v.shape[1]
        centres = state.setdefault("centres", {})
        mu = v.mean(1)
        if layer in centres:
            mu = lam * centres[layer][0] + (1.0 - lam) * mu
        c = v - mu.unsqueeze(1)
        power = (c**2).sum(-1).mean(-1)
        if layer in centres:
            power = lam * centres[layer][1] + (1.0 - lam) * power
        centres[layer] = (mu, power)
        r = (self.norm / power.clamp_min(1e-12).sqrt()).view(-1, 1, 1)
        cn = c / c.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        s = torch.bmm(cn, w.transpose(1, 2)) / r
        g = torch.softmax(s / self.temperature, dim=-1)
        hebb = (torch.bmm(g.transpose(1, 2), cn) * r - (g * s).sum(1).unsqueeze(-1) * w) / n_ex
        hebb = hebb / (g.mean(1).unsqueeze(-1) + 1.0 / w.shape[1])
        centred = torch.bmm(c, w.transpose(1, 2))
        current_rms = centred.pow(2).mean(1).sqrt()
        target = -(w @ mu.unsqueeze(-1)).squeeze(-1) - self.threshold * current_rms
        return -hebb * self.centred_scale, (bias - target) * self.homeostasis_scale

    def step(self, net, state, x, y):
        if self.form == "softhebb":
            return super().step(net, state, x, y)
        pre, post = net.forward(x)
        dws, dbs = [], []
        for layer in range(net.n_layers - 1):
            w = net.weights[layer]
            v = receptive_fields(net, layer, post[layer])
            dw, db = self._centred(state, layer, v, w.reshape(w.shape[0], w.shape[1], -1), net.biases[layer])
            dws.append(dw.reshape(w.shape))
            dbs.append(db)
        dw, db, loss = readout_delta_rule(net, post, y)
        state["seen"] += int(x.shape[0])
        return RuleStep(weights=[*dws, dw], biases=[*dbs, db], loss=loss)
