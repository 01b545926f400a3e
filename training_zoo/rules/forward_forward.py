"""The Forward-Forward algorithm (Hinton 2022): layer-local goodness of positive vs negative data."""

from __future__ import annotations

import torch

from training_zoo.rules.base import RuleStep, StochasticRule
from training_zoo.dense import per_example_ce
from training_zoo.rules.node_perturbation import child_generator
from training_zoo.rules.registry import register


@register
class ForwardForward(StochasticRule):
    r"""Forward-Forward: every hidden layer separates positive from negative data by goodness.

    Data. The label is written into the first C input features (``label_scale`` times one-hot;
    the input must have more than C features): positive data carry the true label, negative
    data a uniformly drawn wrong one, neutral data :math:`\text{label\_scale}/C` everywhere.

    Network (the rule's own forward, :meth:`forward`): the first hidden layer sees the embedded
    input, every later layer (and the readout) the previous activity normalised to unit RMS,
    :math:`\bar h = h/\sqrt{\mathrm{mean}(h^2)+\epsilon}`, so it cannot read the previous
    goodness off its length: :math:`r_l = f(W_l \bar h_{l-1} + b_l)`, :math:`h_l = r_l`
    (``resmlp`` skip: :math:`h_l = \bar h_{l-1} + r_l`).

    Objective per hidden layer, goodness :math:`G_l = \mathrm{mean}_i\, r_{l,i}^2` (the layer's
    own branch), threshold :math:`\theta` (``threshold``; default 2, or 0.5 for units bounded
    by 1, whose mean square cannot reach 2):

    .. math::
        \ell_l = \mathrm{softplus}(\theta - G_l^{+}) + \mathrm{softplus}(G_l^{-} - \theta),

    minimised by each layer alone with its input held fixed, so the descent direction is

    .. math::
        \Delta W_l = \frac1B\sum_{b,\pm} \Big[\frac{\partial\ell_l}{\partial G^\pm}\,
        \frac{2}{n_l}\, r^\pm_l\odot f'(a^\pm_l)\Big]\,\bar h_{l-1}^{\pm\top},\quad
        \frac{\partial\ell}{\partial G^+} = -\sigma(\theta - G^+),\ \
        \frac{\partial\ell}{\partial G^-} = \sigma(G^- - \theta).

    The readout is a local softmax classifier on the neutral pass (delta rule,
    :math:`\Delta W_L = (\mathrm{softmax}(z) - y)\,\bar h_{L-1}^\top`); it gives
    :meth:`forward` meaningful logits and is the reported training loss. Test accuracy is
    Hinton's: :meth:`predict` returns, for every label, the total goodness of all hidden layers
    with that label embedded; the class with the highest goodness wins.
    """

    id = "forward_forward"
    family = "local_objective"
    reference = "Hinton 2022, arXiv:2212.13345 (The Forward-Forward Algorithm)"
    description = "Forward-Forward: per-layer goodness, positive (true label) vs negative (wrong label) data"
    supports = ("mlp", "resmlp")

    BOUNDED = ("tanh", "sigmoid", "hardtanh")

    def __init__(self, threshold: float | None = None, label_scale: float = 3.0, eps: float = 1e-6):
        self.threshold = None if threshold is None else float(threshold)
        self.label_scale = float(label_scale)
        self.eps = float(eps)

    def init_state(self, net, generator):
        return {"generator": child_generator(generator, net.device)}

    def theta(self, net) -> float:
        """The goodness threshold: ``threshold``, or by default 2 (0.5 for units bounded by 1)."""
        if self.threshold is not None:
            return self.threshold
        return 0.5 if net.activation.name in self.BOUNDED else 2.0

    def embed(self, x: torch.Tensor, labels: torch.Tensor | None, n_classes: int) -> torch.Tensor:
        """x (M, B, n) with the label (M, B) written into its first C features (None: neutral)."""
        if x.shape[-1] <= n_classes:
            raise ValueError("forward_forward needs more input features than classes")
        out = x.clone()
        if labels is None:
            out[..., :n_classes] = self.label_scale / n_classes
        else:
            out[..., :n_classes] = self.label_scale * torch.nn.functional.one_hot(labels, n_classes).to(x.dtype)
        return out

    def normalise(self, h: torch.Tensor) -> torch.Tensor:
        return h / torch.sqrt((h**2).mean(-1, keepdim=True) + self.eps)

    def layers(self, net, x_embedded):
        """Per hidden layer: pre-activation a_l, branch r_l, its (normalised) input, activity h_l."""
        pre, branch, inputs, acts = [], [], [], []
        h = x_embedded
        for layer in range(net.n_layers - 1):
            inp = h if layer == 0 else self.normalise(h)
            a = net.layer_pre(layer, inp)
            r = net.activation.f(a)
            h = inp + r if net.is_skip(layer) else r
            pre.append(a)
            branch.append(r)
            inputs.append(inp)
            acts.append(h)
        return pre, branch, inputs, acts

    def forward(self, net, state, x):
        """(pre, post) of the neutral-label pass, in DenseStack.forward's layout: ``post[0]`` the
        raw input, ``post[l]`` hidden layer l's activity before normalisation, ``post[-1]`` the
        readout logits."""
        x = net.broadcast_input(x)
        c = net.weights[-1].shape[1]
        pre, _, _, acts = self.layers(net, self.embed(x, None, c))
        z = net.layer_pre(net.n_layers - 1, self.normalise(acts[-1]))
        return [*pre, z], [x, *acts, z]

    def predict(self, net, state, x):
        """Total goodness per candidate label: (M, B, C), larger = more likely."""
        x = net.broadcast_input(x)
        m, b, _ = x.shape
        c = net.weights[-1].shape[1]
        labels = torch.arange(c, device=x.device).repeat_interleave(b).unsqueeze(0).expand(m, -1)
        _, branch, _, _ = self.layers(net, self.embed(x.repeat(1, c, 1), labels, c))
        goodness = sum((r**2).mean(-1) for r in branch)  # (M, C*B)
        return goodness.reshape(m, c, b).transpose(1, 2)

    def sample_noise(self, net, state, batch: int) -> torch.Tensor:
        """Offsets 1..C-1 that turn the true label into a wrong one: (M, B) integers."""
        c = net.weights[-1].shape[1]
        return torch.randint(1, c, (net.m, batch), generator=state["generator"], device=net.device)

    def step_with_noise(self, net, state, x, y, noise):
        x = net.broadcast_input(x)
        m, b, _ = x.shape
        c = net.weights[-1].shape[1]
        yy = y.unsqueeze(0).expand(m, -1) if y.dim() == 1 else y
        n = net.n_layers
        theta = self.theta(net)
        dws = [torch.zeros_like(w) for w in net.weights]
        dbs = [torch.zeros_like(v) for v in net.biases]
        for labels, sign in ((yy, 1.0), ((yy + noise) % c, -1.0)):
            pre, branch, inputs, _ = self.layers(net, self.embed(x, labels, c))
            for layer in range(n - 1):
                r = branch[layer]
                good = (r**2).mean(-1)
                # d loss / d G: -sigma(theta - G) for positive data, sigma(G - theta) for negative
                dl_dg = -sign * torch.sigmoid(sign * (theta - good))
                d = dl_dg.unsqueeze(-1) * (2.0 / r.shape[-1]) * r * net.activation.df(pre[layer])
                dws[layer] += torch.bmm(d.transpose(1, 2), inputs[layer]) / b
                dbs[layer] += d.sum(1) / b
        _, _, _, acts = self.layers(net, self.embed(x, None, c))
        top = self.normalise(acts[-1])
        z = net.layer_pre(n - 1, top)
        err = torch.softmax(z, -1) - torch.nn.functional.one_hot(yy, c).to(x.dtype)
        dws[n - 1] = torch.bmm(err.transpose(1, 2), top) / b
        dbs[n - 1] = err.mean(1)
        return RuleStep(weights=dws, biases=dbs, loss=per_example_ce(z, y).mean(1))
