"""Difference target propagation (Lee, Zhang, Fischer & Bengio 2015)."""

from __future__ import annotations

import torch

from training_zoo.dense import init_weight
from training_zoo.rules.base import RuleStep, StochasticRule
from training_zoo.dense import per_example_ce
from training_zoo.rules.node_perturbation import child_generator
from training_zoo.rules.registry import register


@register
class DifferenceTargetPropagation(StochasticRule):
    r"""Difference target propagation with learned approximate inverses.

    Forward activities :math:`h_k` (``h_0`` the input, :math:`h_k = f(a_k)`, ``resmlp`` skip
    :math:`h_k = h_{k-1} + f(a_k)`), logits :math:`z = W_L h_{L-1} + b_L`.

    Targets. The top hidden layer gets a gradient target with step :math:`\hat\eta`
    (``target_step``), lower layers the difference-corrected propagation through learned
    inverses :math:`g_k` of layer k+1:

    .. math::
        \hat h_{L-1} = h_{L-1} - \hat\eta\,\frac{\partial \ell}{\partial h_{L-1}},\qquad
        \hat h_{k} = h_{k} + g_{k}(\hat h_{k+1}) - g_{k}(h_{k+1}),

    with :math:`g_k(h) = f(V_k h + c_k)` (plain layer) or :math:`g_k(h) = h + V_k h + c_k`
    (skip layer: the identity path carries the target difference down unchanged and the linear
    branch learns to undo :math:`f(a)`).

    Forward weights minimise the layer-local losses :math:`\tfrac12\lVert h_k - \hat h_k\rVert^2`
    with their input held fixed; the descent direction (scaled by :math:`1/\hat\eta` so it is in
    gradient units) is

    .. math::
        \Delta W_k = \frac{1}{\hat\eta B}\sum_b \big[(h_k - \hat h_k)\odot f'(a_k)\big] h_{k-1}^\top,

    and the readout gets the cross-entropy gradient (its own local delta rule).

    Inverses (rule-internal state, one normalised-LMS step of size
    ``feedback_lr / (1 + mean ||F_{k+1}||^2)`` on every batch, before the targets are computed): noise-corrupted reconstruction
    :math:`\min_{V_k,c_k} \tfrac12\lVert g_k(F_{k+1}(\tilde h_k)) - \tilde h_k\rVert^2`,
    :math:`\tilde h_k = h_k + \sigma\xi`, :math:`F_{k+1}` the forward map of layer k+1.
    """

    id = "difference_target_propagation"
    family = "target_propagation"
    reference = "Lee, Zhang, Fischer & Bengio 2015, ECML-PKDD"
    description = "Difference target propagation: learned inverses carry layer targets, layer-local losses"
    supports = ("mlp", "resmlp")

    def __init__(self, target_step: float = 0.1, noise: float = 0.1, feedback_lr: float = 0.5,
                 feedback_init_scale: float = 1.0):
        self.target_step = float(target_step)
        self.noise = float(noise)
        self.feedback_lr = float(feedback_lr)
        self.feedback_init_scale = float(feedback_init_scale)

    def init_state(self, net, generator):
        dtype, dev = net.weights[0].dtype, net.device
        v, c = [], []
        for k in range(1, net.n_layers - 1):
            n_out, n_in = net.weights[k].shape[1:]
            v.append(init_weight(net.m, n_in, n_out, "default", self.feedback_init_scale, generator)
                     .to(device=dev, dtype=dtype))
            c.append(torch.zeros(net.m, n_in, device=dev, dtype=dtype))
        return {"generator": child_generator(generator, dev), "feedback_weights": v, "feedback_biases": c}

    def sample_noise(self, net, state, batch: int) -> list[torch.Tensor]:
        g, dtype = state["generator"], net.weights[0].dtype
        return [torch.randn(net.m, batch, net.sizes[k], generator=g, device=net.device, dtype=dtype) * self.noise
                for k in range(1, net.n_layers - 1)]

    @staticmethod
    def inverse(net, state, k: int, h: torch.Tensor):
        """g_k: activity of layer k+1 -> activity of layer k (k = 1 .. L-2); returns (g, a_g)."""
        v, c = state["feedback_weights"][k - 1], state["feedback_biases"][k - 1]
        a = torch.baddbmm(c.unsqueeze(1), h, v.transpose(1, 2))
        return (h + a if net.is_skip(k) else net.activation.f(a)), a

    def train_inverses(self, net, state, post, noise) -> torch.Tensor:
        """One SGD step on every inverse's reconstruction loss; returns the (M,) mean loss."""
        total = torch.zeros(net.m, device=net.device, dtype=net.weights[0].dtype)
        for k in range(1, net.n_layers - 1):
            h_noisy = post[k] + noise[k - 1]
            fwd = net.layer_post(k, net.layer_pre(k, h_noisy), h_noisy)
            rec, a = self.inverse(net, state, k, fwd)
            err = rec - h_noisy
            total = total + 0.5 * (err**2).sum(-1).mean(-1)
            d = err if net.is_skip(k) else err * net.activation.df(a)
            b = d.shape[1]
            # normalised LMS: the step is stable whatever the scale of the layer's activity
            lr = (self.feedback_lr / (1.0 + (fwd**2).sum(-1).mean(-1))).view(-1, 1, 1)
            state["feedback_weights"][k - 1] -= lr * torch.bmm(d.transpose(1, 2), fwd) / b
            state["feedback_biases"][k - 1] -= lr[:, 0] * d.mean(1)
        return total

    def step_with_noise(self, net, state, x, y, noise):
        x = net.broadcast_input(x)
        pre, post = net.forward(x)
        m, b, c = post[-1].shape
        n = net.n_layers
        rec_loss = self.train_inverses(net, state, post, noise)
        yy = y.unsqueeze(0).expand(m, -1) if y.dim() == 1 else y
        err_out = torch.softmax(post[-1], -1) - torch.nn.functional.one_hot(yy, c).to(x.dtype)
        targets = [None] * n  # targets[k] for hidden activity post[k], k = 1 .. L-1
        targets[n - 1] = post[n - 1] - self.target_step * torch.bmm(err_out, net.weights[n - 1])
        for k in range(n - 2, 0, -1):
            g_t, _ = self.inverse(net, state, k, targets[k + 1])
            g_h, _ = self.inverse(net, state, k, post[k + 1])
            targets[k] = post[k] + g_t - g_h
        dws, dbs = [], []
        for layer in range(n - 1):
            d = (post[layer + 1] - targets[layer + 1]) * net.activation.df(pre[layer])
            dws.append(torch.bmm(d.transpose(1, 2), post[layer]) / (self.target_step * b))
            dbs.append(d.sum(1) / (self.target_step * b))
        dws.append(torch.bmm(err_out.transpose(1, 2), post[-2]) / b)
        dbs.append(err_out.mean(1))
        return RuleStep(weights=dws, biases=dbs, loss=per_example_ce(post[-1], y).mean(1),
                        extras={"reconstruction_loss": rec_loss})
