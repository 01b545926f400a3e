"""Equilibrium propagation (Scellier & Bengio 2017; Laborieux et al. 2021)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from training_zoo.architectures import PopulationCNN, layer_pre_with
from training_zoo.dense import per_example_ce
from training_zoo.rules.base import LearningRule, RuleStep, Variant
from training_zoo.rules.registry import register


def dense_conv_maps(net) -> dict[int, torch.Tensor]:
    """For the conv layers (after the first) whose input is at most ``2 k^2`` positions, each
    network's convolution as a dense matrix ``A_l`` (M, n_out, n_in) on flattened (C, H, W)
    units, for :func:`transpose_drive`. Its entries are the kernels' weights themselves (the
    convolution of a one-hot basis), so ``A_l^T r`` is the transposed convolution up to the
    order of the additions (float rounding); it costs ``H W / k^2 <= 2`` times the
    convolution's multiply-adds, but as one batched GEMM it runs about 3x faster on CPU than
    the grouped transposed convolution of these small maps. An empty dict for dense stacks."""
    if not isinstance(net, PopulationCNN):
        return {}
    maps = {}
    for layer in range(1, net.n_conv):
        c_in, (hh, ww) = net.channels[layer - 1], net.spatial[layer - 1]
        if hh * ww > 2 * net.kernel ** 2:
            continue
        w = net.weights[layer]
        n_in = c_in * hh * ww
        basis = torch.eye(n_in, dtype=w.dtype, device=w.device).reshape(n_in, c_in, hh, ww)
        out = F.conv2d(basis, w.reshape(-1, *w.shape[2:]), stride=net.stride, padding=net.padding)
        maps[layer] = out.reshape(n_in, net.m, -1).permute(1, 2, 0).contiguous()
    return maps


def transpose_drive(net, layer: int, r: torch.Tensor, dense: dict | None = None) -> torch.Tensor:
    """The drive that state ``r`` of ``layer`` sends down to the layer's input through the
    symmetric weights: the transpose of ``h -> W_l h`` applied to r (``W_l^T r`` for a dense
    layer, the transposed convolution for a conv layer), in the input's layout. ``dense``:
    :func:`dense_conv_maps` of the current weights, used for the layers it holds."""
    w = net.weights[layer]
    if isinstance(net, PopulationCNN):
        m = net.m
        if layer < net.n_conv:
            c_in = net.channels[layer - 1]
            hh, ww = net.spatial[layer - 1]
            if dense and layer in dense:
                b = r.shape[0]
                down = torch.bmm(r.reshape(b, m, -1).transpose(0, 1), dense[layer])
                return down.transpose(0, 1).reshape(b, m * c_in, hh, ww)
            flat = w.reshape(m * w.shape[1], *w.shape[2:])
            # conv_transpose2d is the same adjoint as torch.nn.grad.conv2d_input (equal results)
            # but 1-3x faster on CPU for the grouped layers; output_padding restores the
            # input's size that the stride rounded away.
            k, stride, pad = net.kernel, net.stride, net.padding
            out = [(n - 1) * stride - 2 * pad + k for n in r.shape[2:]]
            return F.conv_transpose2d(r, flat, stride=stride, padding=pad, groups=net.conv_args(layer)["groups"],
                                      output_padding=(hh - out[0], ww - out[1]))
        down = torch.bmm(r, w)  # (M, B, F) -> (B, M*C, H, W)
        hh, ww = net.spatial[-1]
        return down.transpose(0, 1).reshape(r.shape[1], m * net.channels[-1], hh, ww)
    return torch.bmm(r, w)


def output_shapes(net, x: torch.Tensor) -> list[tuple[int, ...]]:
    """The shapes of ``net.forward(x)``'s pre-activations, without running it (``x`` broadcast)."""
    if isinstance(net, PopulationCNN):
        b = x.shape[0]
        conv = [(b, net.m * c, hh, ww) for c, (hh, ww) in zip(net.channels, net.spatial)]
        return [*conv, (net.m, b, net.shapes[-1][0])]
    return [(net.m, x.shape[1], w.shape[1]) for w in net.weights]


# activations whose values lie in [-1, 1] already: a state bound >= 1 clips nothing
_WITHIN_UNIT = ("tanh", "sigmoid", "hardtanh")


def hebbian_product(net, layer: int, r: torch.Tensor, h: torch.Tensor):
    """(d/dW_l, d/db_l) of ``sum <r, W_l h + b_l>``: ``r h^T`` and ``sum_batch r`` for a dense
    layer, the convolutional equivalent for a conv layer (by autograd on the linear map)."""
    w = net.weights[layer].detach().requires_grad_(True)
    b = net.biases[layer].detach().requires_grad_(True)
    with torch.enable_grad():
        a = layer_pre_with(net, layer, h.detach(), w, b)
        gw, gb = torch.autograd.grad((a * r).sum(), [w, b])
    return gw, gb


class HopfieldRelaxation:
    r"""Fixed-point relaxation of the layered Hopfield-like energy of a population.

    States :math:`s_l` live on the outputs of the weights :math:`W_l` (hidden branches and, with
    ``output_in_energy``, the output neurons); the activity entering weight l is
    :math:`h_0 = x`, :math:`h_{l+1} = s_l` (``resmlp`` skip: :math:`h_{l+1} = h_l + s_l`). With
    :math:`\rho(u) = \mathrm{clip}(f(u), -c, c)` and :math:`G` its convex primitive inverse,

    .. math::
        E(s) = \sum_l G(s_l) - \sum_l s_l\cdot(W_l h_l + b_l),\qquad
        F_\beta = E + \beta\,C(s, y),

    with the cost :math:`C = \tfrac12\lVert s_L - y\rVert^2` on the output neurons
    (``output_in_energy``, Scellier & Bengio 2017; Laborieux et al. 2021's MLP) or the
    cross-entropy of a linear readout :math:`z = W_L h_{L-1} + b_L` outside the energy.
    One sweep sets each layer, bottom-up, to its minimiser given its neighbours (the drive from
    above taken at the sweep's start):

    .. math::
        s_l \leftarrow \rho\big(W_l h_l + b_l + D_{l+1}\big),\qquad
        D_k = W_k^\top s_k + [\text{skip}_k]\,D_{k+1},

    the output neurons :math:`s_L \leftarrow \rho(W_L h_{L-1} + b_L + \beta(y - s_L))` (the
    nudge evaluated at the sweep's start), and for the readout outside the energy the force
    :math:`D_{L} = -\beta W_L^\top(\mathrm{softmax}(z) - y)` on :math:`h_{L-1}`.
    ``W^T`` is the transposed convolution for conv layers (:func:`transpose_drive`).
    """

    def __init__(self, bound: float | None, output_in_energy: bool = False):
        self.bound = bound
        self.output_in_energy = output_in_energy

    def n_states(self, net) -> int:
        return net.n_layers if self.output_in_energy else net.n_layers - 1

    def rho(self, net, u):
        name, bound = net.activation.name, self.bound
        if bound is None or (name in _WITHIN_UNIT and bound >= 1.0):
            return net.activation.f(u)  # the clip would change nothing
        if name == "relu" and bound > 0.0:
            return u.clamp(0.0, bound)  # clip(relu(u)) in one pass
        r = net.activation.f(u)
        return r.clamp_(-bound, bound) if r is not u else r.clamp(-bound, bound)

    @staticmethod
    def skip(net, layer) -> bool:
        return layer < net.n_layers - 1 and net.is_skip(layer)

    def activities(self, net, x, states):
        hs = [x]
        for layer, r in enumerate(states[: net.n_layers - 1]):
            hs.append(hs[-1] + r if self.skip(net, layer) else r)
        return hs

    def zeros(self, net, x):
        """Zero states (Laborieux et al.'s initialisation), shaped as the layers' outputs."""
        return [torch.zeros(s, dtype=x.dtype, device=x.device) for s in output_shapes(net, x)[: self.n_states(net)]]

    def feedforward(self, net, x):
        states, h = [], x
        for layer in range(self.n_states(net)):
            r = self.rho(net, net.layer_pre(layer, h))
            states.append(r)
            h = h + r if self.skip(net, layer) else r
        return states

    def sweep(self, net, x, states, beta, target, pre0=None, dense=None):
        """One sweep; ``pre0``, if given, is ``net.layer_pre(0, x)`` and ``dense``
        :func:`dense_conv_maps` (both constant during a relaxation, so :meth:`relax` computes
        them once)."""
        n_hidden = net.n_layers - 1
        drive = [None] * (n_hidden + 1)  # drive[k] reaches h_k, k = 1..L-1
        if self.output_in_energy:
            drive[n_hidden] = transpose_drive(net, n_hidden, states[n_hidden])
        elif beta != 0.0:
            hs = self.activities(net, x, states)
            z = net.layer_pre(n_hidden, hs[-1])
            drive[n_hidden] = transpose_drive(net, n_hidden, -beta * (torch.softmax(z, -1) - target))
        for k in range(n_hidden - 1, 0, -1):
            d = transpose_drive(net, k, states[k], dense)
            above = drive[k + 1]
            if self.skip(net, k) and above is not None:
                d.add_(above)  # d is a fresh tensor
            drive[k] = d
        new, h = [], x
        for layer in range(n_hidden):
            d = drive[layer + 1]
            if layer == 0 and pre0 is not None:
                u = pre0 if d is None else pre0 + d
            else:
                u = net.layer_pre(layer, h)
                if d is not None:
                    u.add_(d)
            r = self.rho(net, u)
            new.append(r)
            h = h + r if self.skip(net, layer) else r
        if self.output_in_energy:
            u = pre0 if (n_hidden == 0 and pre0 is not None) else net.layer_pre(n_hidden, h)
            if beta != 0.0:
                u = u + beta * (target - states[n_hidden])
            new.append(self.rho(net, u))
        return new

    def relax(self, net, x, states, beta, target, steps, pre0=None, dense=None):
        """``steps`` sweeps from ``states``; ``pre0`` (``net.layer_pre(0, x)``) and ``dense``
        (:func:`dense_conv_maps`) if already computed."""
        if steps > 0 and pre0 is None:
            pre0 = net.layer_pre(0, x)
        if steps > 0 and dense is None:
            dense = dense_conv_maps(net)
        for _ in range(steps):
            states = self.sweep(net, x, states, beta, target, pre0, dense)
        return states


@register
class EquilibriumPropagation(LearningRule):
    r"""Equilibrium propagation: free and nudged fixed points, contrastive Hebbian update.

    The network is the energy-based model of :class:`HopfieldRelaxation`. Default (Scellier &
    Bengio 2017; Laborieux et al. 2021's MLP): the output neurons are states of the energy,
    nudged towards the one-hot label by the squared error, all states start at zero, and the
    prediction is the free fixed point's output neurons. Three phases per batch: free
    (``free_steps`` sweeps), then nudged with :math:`+\beta` and :math:`-\beta` (``nudge_steps``
    sweeps each, from the free fixed point). Since :math:`\partial F/\partial W_l = -s_l h_l^\top`,
    the symmetric EP estimate of the loss gradient (Laborieux et al. 2021) is

    .. math::
        \Delta W_l = \frac{1}{2\beta}\Big[s_l h_l^\top\Big]^{-\beta}
                   - \frac{1}{2\beta}\Big[s_l h_l^\top\Big]^{+\beta},\qquad
        \Delta b_l = \frac{1}{2\beta}\big(s_l^{-\beta} - s_l^{+\beta}\big)

    (batch means; descent directions, i.e. minus the usual update), for every layer including
    the output. ``nudge="one_sided"`` is Scellier & Bengio's original estimate from the free and
    one :math:`+\beta` phase, :math:`\frac1\beta([s h^\top]^0 - [s h^\top]^{+\beta})`.

    ``output="softmax_readout"``: a linear readout outside the energy with a cross-entropy
    nudge (Laborieux et al.'s convolutional networks); it gets
    :math:`\tfrac12\sum_\pm(\mathrm{softmax}(z^\pm) - y)\,h_{L-1}^{\pm\top}`.
    ``init="feedforward"`` starts the free phase from a feedforward pass instead of zeros.
    ``state_bound`` clips the states (a hard-sigmoid-like range, as in Laborieux et al.).
    ``cnn``: conv layers are states too, the top-down drive the transposed convolution.
    """

    id = "equilibrium_propagation"
    family = "energy_based"
    reference = "Scellier & Bengio 2017, Front. Comput. Neurosci.; Laborieux et al. 2021, Front. Neurosci."
    description = "Equilibrium propagation: free and +/-beta nudged fixed points of a Hopfield energy, contrastive Hebbian update"
    supports = ("mlp", "resmlp", "cnn")
    variants = {
        "default": Variant("Output neurons inside the energy, squared-error nudging, zero-initialised "
                           "states, symmetric nudge (Laborieux et al. 2021's MLP)."),
        "one_sided": Variant("Scellier & Bengio 2017's estimate: free phase and one +beta phase.",
                             {"nudge": "one_sided"}),
        "softmax_readout": Variant("Linear softmax readout outside the energy with cross-entropy nudging, "
                                   "states initialised by a feedforward pass (Laborieux et al. 2021's CNNs).",
                                   {"output": "softmax_readout", "init": "feedforward"}),
        "long_relaxation": Variant("Longer relaxation (free 50, nudged 20 sweeps), as in deeper-network "
                                   "experiments.", {"free_steps": 50, "nudge_steps": 20}),
    }

    OUTPUTS = ("energy", "softmax_readout")

    def __init__(self, beta: float = 0.5, free_steps: int = 20, nudge_steps: int = 10,
                 state_bound: float | None = 1.0, output: str = "energy", init: str = "zero",
                 nudge: str = "symmetric"):
        if output not in self.OUTPUTS:
            raise ValueError(f"output must be one of {self.OUTPUTS}, got {output!r}")
        if init not in ("zero", "feedforward"):
            raise ValueError(f"init must be 'zero' or 'feedforward', got {init!r}")
        if nudge not in ("symmetric", "one_sided"):
            raise ValueError(f"nudge must be 'symmetric' or 'one_sided', got {nudge!r}")
        self.beta = float(beta)
        self.free_steps = int(free_steps)
        self.nudge_steps = int(nudge_steps)
        self.state_bound = None if state_bound is None else float(state_bound)
        self.output = output
        self.init = init
        self.nudge = nudge

    @property
    def output_units(self) -> str:
        """What the network's output units are (for recordings)."""
        return "energy_output" if self.output == "energy" else "logits"

    def _relaxation(self):
        return HopfieldRelaxation(self.state_bound, self.output == "energy")

    def free_phase(self, net, x, steps=None, pre0=None, dense=None):
        relax = self._relaxation()
        x = net.broadcast_input(x)
        states = relax.zeros(net, x) if self.init == "zero" else relax.feedforward(net, x)
        return relax.relax(net, x, states, 0.0, None, self.free_steps if steps is None else steps, pre0, dense)

    def forward(self, net, state, x):
        """(pre, post) at the free fixed point, in the network's forward layout. ``post[-1]`` is
        the output neurons' state (default) or the readout's logits; ``pre[-1]`` their input
        ``W_L h_{L-1} + b_L``."""
        relax = self._relaxation()
        x = net.broadcast_input(x)
        pre0 = net.layer_pre(0, x)
        states = self.free_phase(net, x, pre0=pre0)
        hs = relax.activities(net, x, states)
        pre = [pre0, *(net.layer_pre(layer, hs[layer]) for layer in range(1, net.n_layers))]
        out = states[-1] if self.output == "energy" else pre[-1]
        return pre, [*hs, out]

    def predict(self, net, state, x):
        """Scores (M, B, C): the free fixed point's output neurons, or the readout's logits."""
        return self.forward(net, state, x)[1][-1]

    def step(self, net, state, x, y):
        relax = self._relaxation()
        x = net.broadcast_input(x)
        b = x.shape[0] if isinstance(net, PopulationCNN) else x.shape[1]
        n_hidden = net.n_layers - 1
        c = net.weights[-1].shape[1]
        yy = y.unsqueeze(0).expand(net.m, -1) if y.dim() == 1 else y
        target = torch.nn.functional.one_hot(yy, c).to(net.weights[0].dtype)
        pre0, dense = net.layer_pre(0, x), dense_conv_maps(net)  # shared by the three phases
        free = self.free_phase(net, x, pre0=pre0, dense=dense)
        h_free = relax.activities(net, x, free)
        if self.output == "energy":
            loss = 0.5 * ((free[-1] - target) ** 2).sum(-1).mean(1)
        else:
            loss = per_example_ce(net.layer_pre(n_hidden, h_free[-1]), y).mean(1)
        betas = (self.beta, -self.beta) if self.nudge == "symmetric" else (self.beta,)
        phases = []
        for beta in betas:
            states = relax.relax(net, x, free, beta, target, self.nudge_steps, pre0, dense)
            phases.append((states, relax.activities(net, x, states)))
        if self.nudge == "symmetric":
            (s_p, h_p), (s_m, h_m), k = phases[0], phases[1], 1.0 / (2.0 * self.beta * b)
        else:
            (s_p, h_p), (s_m, h_m), k = phases[0], (free, h_free), 1.0 / (self.beta * b)
        dws, dbs = [], []
        for layer in range(relax.n_states(net)):
            gw_m, gb_m = hebbian_product(net, layer, s_m[layer], h_m[layer])
            gw_p, gb_p = hebbian_product(net, layer, s_p[layer], h_p[layer])
            dws.append(k * (gw_m - gw_p))
            dbs.append(k * (gb_m - gb_p))
        if self.output == "softmax_readout":
            dw_out, db_out = 0.0, 0.0
            for _, hs in phases if self.nudge == "symmetric" else (phases[0], (free, h_free)):
                err = torch.softmax(net.layer_pre(n_hidden, hs[-1]), -1) - target
                gw, gb = hebbian_product(net, n_hidden, err, hs[-1])
                dw_out = dw_out + gw / (2 * b)
                db_out = db_out + gb / (2 * b)
            dws.append(dw_out)
            dbs.append(db_out)
        return RuleStep(weights=dws, biases=dbs, loss=loss)
