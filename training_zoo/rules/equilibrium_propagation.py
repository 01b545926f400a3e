"""Equilibrium propagation with symmetric nudging (Scellier & Bengio 2017; Laborieux et al. 2021)."""

from __future__ import annotations

import torch

from training_zoo.rules.base import LearningRule, RuleStep
from training_zoo.dense import per_example_ce
from training_zoo.rules.registry import register


class HopfieldRelaxation:
    r"""Fixed-point relaxation of the layered Hopfield-like energy of a DenseStack population.

    States :math:`r_l` live on the hidden branches (the outputs of hidden weight l); the
    activity entering weight l is :math:`h_0 = x`, :math:`h_{l+1} = r_l` (``resmlp`` skip:
    :math:`h_{l+1} = h_l + r_l`). With :math:`\rho(u) = \mathrm{clip}(f(u), -c, c)` and
    :math:`G` its convex primitive inverse (:math:`G'(r) = \rho^{-1}(r)`, infinite outside the
    range), the energy and total energy are

    .. math::
        E(r) = \sum_l G(r_l) - \sum_l r_l\cdot(W_l h_l + b_l),\qquad
        F_\beta = E + \beta\,\mathrm{CE}(W_L h_{L-1} + b_L,\ y).

    One layer at a time, bottom-up, each layer set to its minimiser given its neighbours (exact
    block minimisation of E; with a nudge the readout force is taken from the sweep's start),
    gives the sweep

    .. math::
        r_l \leftarrow \rho\big(W_l h_l + b_l + D_{l+1}\big),\quad
        D_{L-1} = -\beta W_L^\top(\mathrm{softmax}(z) - y),\quad
        D_k = W_k^\top r_k + [\text{skip}_k]\,D_{k+1},

    where :math:`D_k` is the top-down drive that reaches :math:`h_k` (through the symmetric
    weights and, for ``resmlp``, along the skip path).
    """

    def __init__(self, bound: float | None):
        self.bound = bound

    def rho(self, net, u):
        r = net.activation.f(u)
        return r if self.bound is None else r.clamp(-self.bound, self.bound)

    @staticmethod
    def activities(net, x, states):
        hs = [x]
        for layer, r in enumerate(states):
            hs.append(hs[-1] + r if net.is_skip(layer) else r)
        return hs

    def feedforward(self, net, x):
        states, h = [], x
        for layer in range(net.n_layers - 1):
            r = self.rho(net, net.layer_pre(layer, h))
            states.append(r)
            h = h + r if net.is_skip(layer) else r
        return states

    def sweep(self, net, x, states, beta, target):
        n_hidden = net.n_layers - 1
        drive = [None] * (n_hidden + 1)  # drive[k] reaches h_k, k = 1..L-1
        if beta != 0.0:
            hs = self.activities(net, x, states)
            z = net.layer_pre(n_hidden, hs[-1])
            drive[n_hidden] = -beta * torch.bmm(torch.softmax(z, -1) - target, net.weights[n_hidden])
        for k in range(n_hidden - 1, 0, -1):
            d = torch.bmm(states[k], net.weights[k])
            above = drive[k + 1]
            drive[k] = d + above if (net.is_skip(k) and above is not None) else d
        new, h = [], x
        for layer in range(n_hidden):
            u = net.layer_pre(layer, h)
            if drive[layer + 1] is not None:
                u = u + drive[layer + 1]
            r = self.rho(net, u)
            new.append(r)
            h = h + r if net.is_skip(layer) else r
        return new

    def relax(self, net, x, states, beta, target, steps):
        for _ in range(steps):
            states = self.sweep(net, x, states, beta, target)
        return states


@register
class EquilibriumPropagation(LearningRule):
    r"""Equilibrium propagation with a symmetric (+beta / -beta) nudge.

    The network is the energy-based model of :class:`HopfieldRelaxation` (its prediction is
    the free fixed point :math:`r^0` of :math:`F_0 = E`, read out linearly: ``predict``). Three
    phases per batch: free (``free_steps`` sweeps from the feedforward pass), then nudged
    towards the label with :math:`+\beta` and with :math:`-\beta` (``nudge_steps`` sweeps each,
    from the free fixed point). Since :math:`\partial F/\partial W_l = -r_l h_l^\top` for a hidden
    layer, the EP estimate of the gradient of the loss :math:`\mathrm{CE}(z(r^0), y)` at the free
    fixed point is the contrastive Hebbian difference

    .. math::
        \Delta W_l = \frac{1}{2\beta}\Big[r_l h_l^\top\Big]^{-\beta} - \frac{1}{2\beta}\Big[r_l h_l^\top\Big]^{+\beta}
        ,\qquad \Delta b_l = \frac{1}{2\beta}\big(r_l^{-\beta} - r_l^{+\beta}\big),

    (batch means; these are descent directions, i.e. minus the usual
    :math:`\frac{1}{2\beta}([\rho\rho^\top]^{+\beta} - [\rho\rho^\top]^{-\beta})` update).
    The readout, outside the energy as in Laborieux et al. 2021, gets
    :math:`\frac{1}{2\beta}(\partial F/\partial W_L|^{+\beta} - \partial F/\partial W_L|^{-\beta})
    = \tfrac12\sum_\pm(\mathrm{softmax}(z^\pm) - y)\,h_{L-1}^{\pm\top}`.

    Exactness: for converged phases the symmetric estimate equals the gradient of that
    cross-entropy at the free fixed point up to :math:`O(\beta^2)` (the equilibrium-propagation
    theorem applies because the sweep's fixed points are exactly the stationary points of
    :math:`F_\beta`).
    ``state_bound`` clips the states (a hard-sigmoid-like range, as in Laborieux et al.) so the
    energy is bounded below whatever the weights; ``None`` disables it.
    """

    id = "equilibrium_propagation"
    family = "energy_based"
    reference = "Scellier & Bengio 2017, Front. Comput. Neurosci.; Laborieux et al. 2021, Front. Neurosci."
    description = "Equilibrium propagation: free and +/-beta nudged fixed points of a Hopfield energy, contrastive Hebbian update"
    supports = ("mlp", "resmlp")

    def __init__(self, beta: float = 0.2, free_steps: int = 20, nudge_steps: int = 10,
                 state_bound: float | None = 1.0):
        self.beta = float(beta)
        self.free_steps = int(free_steps)
        self.nudge_steps = int(nudge_steps)
        self.state_bound = None if state_bound is None else float(state_bound)

    def _relaxation(self):
        return HopfieldRelaxation(self.state_bound)

    def free_phase(self, net, x, steps=None):
        relax = self._relaxation()
        x = net.broadcast_input(x)
        states = relax.feedforward(net, x)
        return relax.relax(net, x, states, 0.0, None, self.free_steps if steps is None else steps)

    def forward(self, net, state, x):
        """(pre, post) at the free fixed point, in DenseStack.forward's layout."""
        relax = self._relaxation()
        x = net.broadcast_input(x)
        states = self.free_phase(net, x)
        hs = relax.activities(net, x, states)
        pre = [net.layer_pre(layer, hs[layer]) for layer in range(net.n_layers)]
        return pre, [*hs, pre[-1]]

    def predict(self, net, state, x):
        """Logits (M, B, C) read out from the free fixed point."""
        return self.forward(net, state, x)[1][-1]

    def step(self, net, state, x, y):
        relax = self._relaxation()
        x = net.broadcast_input(x)
        m, b, _ = x.shape
        n_hidden = net.n_layers - 1
        c = net.weights[-1].shape[1]
        yy = y.unsqueeze(0).expand(m, -1) if y.dim() == 1 else y
        target = torch.nn.functional.one_hot(yy, c).to(x.dtype)
        free = self.free_phase(net, x)
        z_free = net.layer_pre(n_hidden, relax.activities(net, x, free)[-1])
        phases = []
        for beta in (self.beta, -self.beta):
            states = relax.relax(net, x, free, beta, target, self.nudge_steps)
            phases.append((states, relax.activities(net, x, states)))
        (s_p, h_p), (s_m, h_m) = phases
        k = 1.0 / (2.0 * self.beta * b)
        dws, dbs = [], []
        for layer in range(n_hidden):
            dws.append(k * (torch.bmm(s_m[layer].transpose(1, 2), h_m[layer])
                            - torch.bmm(s_p[layer].transpose(1, 2), h_p[layer])))
            dbs.append(k * (s_m[layer] - s_p[layer]).sum(1))
        dw_out, db_out = 0.0, 0.0
        for hs in (h_p, h_m):
            err = torch.softmax(net.layer_pre(n_hidden, hs[-1]), -1) - target
            dw_out = dw_out + torch.bmm(err.transpose(1, 2), hs[-1]) / (2 * b)
            db_out = db_out + err.sum(1) / (2 * b)
        dws.append(dw_out)
        dbs.append(db_out)
        return RuleStep(weights=dws, biases=dbs, loss=per_example_ce(z_free, y).mean(1))
