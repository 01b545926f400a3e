"""Fidelity of the Hebbian, energy-based, local-objective and reinforcement rules to their papers.

Each rule's batched update is checked against a slow per-network reference written here with
plain loops (float64) on ``mlp``, ``resmlp`` and ``cnn`` networks, and each fix of issue 7 has
a test that states the paper's property (these fail on the code before the fix: the rule or
variant did not exist, the architecture was unsupported or the property did not hold).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from training_zoo.architectures import PopulationCNN
from training_zoo.dense import DenseStack
from training_zoo.rules import all_rules, get_rule

M, B = 2, 4
TOL = dict(rtol=1e-6, atol=1e-8)
DENSE_SIZES = [7, 6, 6, 6, 4]
CNN_SHAPE, CNN_CHANNELS, N_CLASSES = (2, 6, 6), [3, 4], 4


# ----------------------------------------------------------------------------- cases
def make_case(family: str, activation: str = "relu", seed: int = 0, init_scale: float = 1.0):
    g = torch.Generator().manual_seed(seed)
    if family == "cnn":
        net = PopulationCNN(CNN_SHAPE, CNN_CHANNELS, N_CLASSES, M, activation=activation,
                            init_scale=init_scale, generator=g, dtype=torch.float64)
        n_in = math.prod(CNN_SHAPE)
        with torch.no_grad():  # non-zero biases so that the bias handling is exercised
            for b in net.biases:
                b.copy_(0.1 * torch.randn(b.shape, generator=g, dtype=torch.float64))
    else:
        net = DenseStack(DENSE_SIZES, M, activation=activation, residual=family == "resmlp",
                         init_scale=init_scale, generator=g, dtype=torch.float64)
        n_in = DENSE_SIZES[0]
    x = torch.randn(B, n_in, generator=g, dtype=torch.float64)
    y = torch.randint(0, N_CLASSES, (B,), generator=g)
    return net, x, y, g


FAMILIES = ["mlp", "resmlp", "cnn"]


class OneNet:
    """Network m of a population as plain per-network tensors, with a loop-based forward."""

    def __init__(self, net, m):
        self.net, self.m = net, m
        self.cnn = isinstance(net, PopulationCNN)
        self.ws = [w[m].clone() for w in net.weights]
        self.bs = [b[m].clone() for b in net.biases]
        self.f, self.df = net.activation.f, net.activation.df
        self.n = len(self.ws)

    def skip(self, layer):
        return (not self.cnn) and self.net.is_skip(layer)

    def pre(self, layer, h, w=None, b=None):
        """One example's pre-activation of ``layer`` from its input h (C,H,W) or (n,)."""
        w = self.ws[layer] if w is None else w
        b = self.bs[layer] if b is None else b
        if self.cnn and layer < self.n - 1:
            return conv_loop(h, w, b, self.net.stride, self.net.padding)
        return w @ h.reshape(-1) + b

    def forward(self, x):
        """Per example: (pre list, post list with post[0] = input)."""
        out = []
        for xb in x:
            h = xb.reshape(CNN_SHAPE) if self.cnn else xb
            pres, posts = [], [h]
            for layer in range(self.n):
                a = self.pre(layer, h)
                if layer == self.n - 1:
                    h = a
                else:
                    h = h + self.f(a) if self.skip(layer) else self.f(a)
                pres.append(a)
                posts.append(h)
            out.append((pres, posts))
        return out


def conv_loop(h, w, b, stride, pad):
    """Single-example convolution written as loops over output positions."""
    hp = F.pad(h, (pad, pad, pad, pad))
    k = w.shape[-1]
    ho = (h.shape[1] + 2 * pad - k) // stride + 1
    wo = (h.shape[2] + 2 * pad - k) // stride + 1
    out = torch.zeros(w.shape[0], ho, wo, dtype=h.dtype)
    for i in range(ho):
        for j in range(wo):
            patch = hp[:, i * stride : i * stride + k, j * stride : j * stride + k]
            out[:, i, j] = (w * patch).sum((1, 2, 3)) + b
    return out


def fields_loop(one: OneNet, layer, h):
    """The input vectors one example presents to ``layer``'s units (patches for conv)."""
    if one.cnn and layer < one.n - 1:
        k, s, p = one.net.kernel, one.net.stride, one.net.padding
        hp = F.pad(h, (p, p, p, p))
        ho = (h.shape[1] + 2 * p - k) // s + 1
        wo = (h.shape[2] + 2 * p - k) // s + 1
        return [hp[:, i * s : i * s + k, j * s : j * s + k].reshape(-1) for i in range(ho) for j in range(wo)]
    return [h.reshape(-1)]


def assert_directions(step, refs, msg=""):
    for layer in range(len(step.weights)):
        want_w = torch.stack([r[0][layer] for r in refs])
        want_b = torch.stack([r[1][layer] for r in refs])
        torch.testing.assert_close(step.weights[layer], want_w, **TOL, msg=f"{msg} weights of layer {layer}")
        torch.testing.assert_close(step.biases[layer], want_b, **TOL, msg=f"{msg} biases of layer {layer}")


def readout_ref(one: OneNet, runs, y):
    """Cross-entropy gradient of the linear readout on the given forward runs."""
    w = one.ws[-1].clone().requires_grad_(True)
    b = one.bs[-1].clone().requires_grad_(True)
    feats = torch.stack([r[1][-2].reshape(-1) for r in runs])
    loss = F.cross_entropy(feats @ w.T + b, y)
    return torch.autograd.grad(loss, [w, b])


# ----------------------------------------------------------------------------- competitive Hebbian
def ref_competitive(rule, net, m, x, y, kind):
    """First batch of SoftHebb / Krotov-Hopfield for network m, as plain loops."""
    one = OneNet(net, m)
    runs = one.forward(x)
    dws, dbs = [], []
    for layer in range(one.n - 1):
        w = one.ws[layer].reshape(one.ws[layer].shape[0], -1)
        vs = [v for r in runs for v in fields_loop(one, layer, r[1][layer])]
        centred = rule.centre == "all" or (rule.centre == "above_first" and layer > 0)
        mu = sum(vs) / len(vs) if centred else torch.zeros_like(vs[0])
        ds = torch.zeros_like(w)
        for v in vs:
            c = v - mu
            if kind == "softhebb":
                u = torch.stack([w[k] @ c for k in range(w.shape[0])])
                s = torch.exp(u / rule.temperature) / torch.exp(u / rule.temperature).sum()
                win = int(u.argmax())
                for k in range(w.shape[0]):
                    yk = s[k] if (k == win or not rule.anti_hebbian) else -s[k]
                    ds[k] += yk * (c - u[k] * w[k])
            else:
                cur = torch.stack([(torch.sign(w[k]) * w[k].abs() ** (rule.p - 1)) @ c for k in range(w.shape[0])])
                order = sorted(range(w.shape[0]), key=lambda k: -float(cur[k]))
                gs = {order[0]: 1.0}
                if rule.rank > 1:
                    gs[order[min(rule.rank, w.shape[0]) - 1]] = -rule.anti_hebbian
                for k, gk in gs.items():
                    ds[k] += gk * (c - cur[k] * w[k])
        ds = ds / ds.abs().max()
        if kind == "softhebb" and rule.norm_adaptive:
            for k in range(w.shape[0]):
                ds[k] = ds[k] * (abs(float(w[k].norm()) - 1.0) + 1e-10) ** 0.5
        dws.append(-ds.reshape(one.ws[layer].shape))
        dbs.append(one.bs[layer] + w @ mu if centred else torch.zeros_like(one.bs[layer]))
    if rule.concurrent_readout:
        gw, gb = readout_ref(one, runs, y)
    else:
        gw, gb = torch.zeros_like(one.ws[-1]), torch.zeros_like(one.bs[-1])
    return dws + [gw], dbs + [gb]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("variant", ["default", "plain_rate", "hebbian_only"])
def test_softhebb_matches_reference(family, variant):
    net, x, y, g = make_case(family)
    rule = get_rule("hebbian").from_variant(variant, temperature=0.7)
    state = rule.init_state(net, g)  # zeroes the hidden biases
    step = rule.step(net, state, x, y)
    assert_directions(step, [ref_competitive(rule, net, m, x, y, "softhebb") for m in range(M)], variant)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("variant", ["default", "euclidean", "concurrent_readout"])
def test_krotov_hopfield_matches_reference(family, variant):
    net, x, y, g = make_case(family)
    rule = get_rule("krotov_hopfield").from_variant(variant, rank=3)
    state = rule.init_state(net, g)
    step = rule.step(net, state, x, y)
    assert_directions(step, [ref_competitive(rule, net, m, x, y, "krotov") for m in range(M)], variant)


def test_krotov_hopfield_anneals_then_trains_the_readout_on_frozen_features():
    """Krotov & Hopfield: rate eps0 (1 - t/T) over the unsupervised phase, hidden layers frozen
    and the readout trained after it; hidden layers have no bias of their own."""
    net, x, y, g = make_case("mlp")
    rule = get_rule("krotov_hopfield")(hidden_examples=4 * B, centre="none")
    state = rule.init_state(net, g)
    assert all(float(b.abs().max()) == 0.0 for b in net.biases[:-1])
    first = rule.step(net, state, x, y)
    half = [rule.step(net, state, x, y) for _ in range(2)][-1]  # t = T/2
    torch.testing.assert_close(half.weights[0], 0.5 * first.weights[0], **TOL)
    assert float(first.weights[-1].abs().max()) == 0.0  # readout waits
    rule.step(net, state, x, y)
    after = rule.step(net, state, x, y)  # phase over
    assert all(float(d.abs().max()) == 0.0 for d in after.weights[:-1])
    assert float(after.weights[-1].abs().max()) > 0.0


@pytest.mark.parametrize("rule_id", ["hebbian", "krotov_hopfield"])
def test_trainer_sizes_the_unsupervised_phase_to_a_short_run(rule_id):
    """A run shorter than the rule's default unsupervised phase (2000 examples) still trains its
    readout: the trainer calls the rule's ``plan`` hook with the run's length, so the phase ends
    after ``hidden_fraction`` of the steps (without the call the readout never moves)."""
    from training_zoo.tasks import Task
    from training_zoo.trainer import train_population

    g = torch.Generator().manual_seed(0)
    n, batch = 64, 8
    x, y = torch.randn(n, 7, generator=g), torch.randint(0, 4, (n,), generator=g)
    task = Task("tiny", x, y, x[:16], y[:16], x[:4], y[:4], 4, (1, 1, 7))
    net = DenseStack([7, 6, 4], M, activation="relu", generator=g)
    before = [w.detach().clone() for w in net.weights]
    rule = get_rule(rule_id)()
    assert rule.hidden_examples > n  # one epoch would end inside the default phase
    res = train_population(rule, net, task, lr=0.05, epochs=1, batch_size=batch, final_eval=False)
    steps = n // batch
    assert res["state"]["hidden_examples"] == round(rule.hidden_fraction * steps) * batch
    assert not torch.equal(net.weights[0], before[0])  # the unsupervised phase ran ...
    assert not torch.equal(net.weights[-1], before[-1])  # ... and the readout trained after it


def test_softhebb_losers_are_anti_hebbian_and_the_step_is_max_normalised():
    """Journé et al. 2023: the winner moves towards the input, every other unit away from it
    (soft anti-Hebbian), and the layer's step is divided by its largest entry."""
    net, x, y, g = make_case("mlp")
    rule = get_rule("hebbian")(centre="none", norm_adaptive=False, temperature=10.0)
    state = rule.init_state(net, g)
    x1 = x[:1]
    step = rule.step(net, state, x1, y[:1])
    w = net.weights[0][0]
    v = x1[0]
    u = w @ v
    upd = -step.weights[0][0]  # the plasticity (minus the descent direction)
    assert float(upd.abs().max()) == pytest.approx(1.0)
    win = int(u.argmax())
    for k in range(w.shape[0]):
        hebb_sign = torch.sign(upd[k] @ (v - u[k] * w[k]))
        assert float(hebb_sign) == (1.0 if k == win else -1.0), k


def test_hebbian_rules_support_every_architecture_family():
    for rid in ("hebbian", "krotov_hopfield"):
        assert set(get_rule(rid).supports) == {"mlp", "resmlp", "cnn"}, rid


# ----------------------------------------------------------------------------- equilibrium propagation
def single_pre(one: OneNet, layer, h, w, b):
    """Batched single-network pre-activation (h: (B, ...)) with F.conv2d / matmul."""
    if one.cnn and layer < one.n - 1:
        return F.conv2d(h, w, b, stride=one.net.stride, padding=one.net.padding)
    return h.reshape(h.shape[0], -1) @ w.T + b


def ref_equilibrium_propagation(rule, net, m, x, y):
    one = OneNet(net, m)
    xin = x.reshape(-1, *CNN_SHAPE) if one.cnn else x
    n = one.n
    target = F.one_hot(y, N_CLASSES).double()
    energy_out = rule.output == "energy"
    n_states = n if energy_out else n - 1

    def rho(u):
        r = one.f(u)
        return r if rule.state_bound is None else r.clamp(-rule.state_bound, rule.state_bound)

    def acts(states):
        hs = [xin]
        for layer in range(n - 1):
            hs.append(hs[-1] + states[layer] if one.skip(layer) else states[layer])
        return hs

    def phi(states, ws, bs, beta):
        hs, total = acts(states), 0.0
        for layer in range(n_states):
            total = total + (states[layer] * single_pre(one, layer, hs[layer], ws[layer], bs[layer])).sum()
        if energy_out:
            return total - beta * 0.5 * ((states[-1] - target) ** 2).sum()
        z = single_pre(one, n - 1, hs[-1], ws[-1], bs[-1])
        return total - beta * F.cross_entropy(z, y, reduction="sum")

    def relax(states, beta, steps):
        for _ in range(steps):
            for layer in range(n_states):  # one block at a time, bottom-up, with the newest states below
                leaf = states[layer].clone().requires_grad_(True)
                trial = states[:layer] + [leaf] + states[layer + 1 :]
                (drive,) = torch.autograd.grad(phi(trial, one.ws, one.bs, beta), leaf)
                states = states[:layer] + [rho(drive).detach()] + states[layer + 1 :]
        return states

    shapes, h = [], xin
    for layer in range(n):
        a = single_pre(one, layer, h, one.ws[layer], one.bs[layer])
        shapes.append(a.shape)
        h = a if layer == n - 1 else (h + one.f(a) if one.skip(layer) else one.f(a))
    if rule.init == "zero":
        start = [torch.zeros(s, dtype=torch.float64) for s in shapes[:n_states]]
    else:
        start, h = [], xin
        for layer in range(n_states):
            r = rho(single_pre(one, layer, h, one.ws[layer], one.bs[layer]))
            start.append(r)
            h = h + r if one.skip(layer) else r
    free = relax(start, 0.0, rule.free_steps)

    def grads(states, beta):
        wl = [w.clone().requires_grad_(True) for w in one.ws]
        bl = [b.clone().requires_grad_(True) for b in one.bs]
        return torch.autograd.grad(-phi(states, wl, bl, beta), [*wl, *bl])

    plus = grads(relax(free, rule.beta, rule.nudge_steps), rule.beta)
    if rule.nudge == "symmetric":
        minus = grads(relax(free, -rule.beta, rule.nudge_steps), -rule.beta)
        out = [(p - q) / (2 * rule.beta * B) for p, q in zip(plus, minus)]
    else:
        free_g = grads(free, 0.0)
        out = [(p - q) / (rule.beta * B) for p, q in zip(plus, free_g)]
    return out[:n], out[n:]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("variant", ["default", "one_sided"])
def test_equilibrium_propagation_matches_reference(family, variant):
    net, x, y, g = make_case(family, activation="tanh", init_scale=0.5)
    rule = get_rule("equilibrium_propagation").from_variant(variant, free_steps=25, nudge_steps=25)
    step = rule.step(net, rule.init_state(net, g), x, y)
    assert_directions(step, [ref_equilibrium_propagation(rule, net, m, x, y) for m in range(M)], variant)


def test_equilibrium_propagation_softmax_readout_variant_on_cnn():
    net, x, y, g = make_case("cnn", activation="tanh", init_scale=0.5)
    rule = get_rule("equilibrium_propagation").from_variant("softmax_readout", free_steps=25, nudge_steps=25)
    step = rule.step(net, rule.init_state(net, g), x, y)
    refs = [ref_equilibrium_propagation(rule, net, m, x, y) for m in range(M)]
    # the readout (outside the energy) is checked by the dense reference; here the conv states
    for layer in range(net.n_layers - 1):
        torch.testing.assert_close(step.weights[layer], torch.stack([r[0][layer] for r in refs]), **TOL)


@pytest.mark.parametrize("family", ["mlp", "resmlp"])
def test_equilibrium_propagation_mlp_keeps_output_neurons_in_the_energy(family):
    """Scellier & Bengio 2017 / Laborieux et al. 2021 (MLP): output neurons are states that
    start at zero and whose free fixed point is the prediction: s_L = rho(W_L h_{L-1} + b_L),
    and the output weights learn by the same contrastive Hebbian rule."""
    net, x, y, g = make_case(family, activation="tanh", init_scale=0.5)
    rule = get_rule("equilibrium_propagation")()
    assert rule.output == "energy" and rule.init == "zero"
    pre, post = rule.forward(net, {}, x)
    torch.testing.assert_close(post[-1], torch.tanh(pre[-1]).clamp(-1, 1))
    torch.testing.assert_close(rule.predict(net, {}, x), post[-1])
    assert rule.output_units == "energy_output"


# ----------------------------------------------------------------------------- forward-forward
def ref_forward_forward(rule, net, m, x, y, noise):
    one = OneNet(net, m)
    n, c = one.n, N_CLASSES
    theta = rule.theta(net)

    def embed(xb, label):
        out = xb.clone()
        out[:c] = rule.label_scale / c if label is None else rule.label_scale * F.one_hot(label, c).double()
        return out.reshape(CNN_SHAPE) if one.cnn else out

    def unit(h):
        size = h.reshape(-1).norm() / (h.numel() ** 0.5 if rule.norm == "rms" else 1.0)
        return h / (size + rule.eps)

    def run(inp, ws, bs):
        h, branches = inp, []
        for layer in range(n - 1):
            layer_in = unit(h).detach()
            r = one.f(one.pre(layer, layer_in, ws[layer], bs[layer]))
            branches.append(r)
            h = layer_in + r if one.skip(layer) else r
        return branches, unit(h).reshape(-1).detach()

    wl = [w.clone().requires_grad_(True) for w in one.ws]
    bl = [b.clone().requires_grad_(True) for b in one.bs]
    total = 0.0
    for b in range(B):
        for label, sign in ((y[b], 1.0), ((y[b] + noise[m, b]) % c, -1.0)):
            branches, _ = run(embed(x[b], label), wl, bl)
            for r in branches:
                g = (r**2).sum() if rule.goodness == "sum" else (r**2).mean()
                th = theta * r.numel() if rule.goodness == "sum" else theta
                total = total + F.softplus(sign * (th - g)) / B
    grads = torch.autograd.grad(total, [*wl[:-1], *bl[:-1]])
    tops = torch.stack([run(embed(x[b], None), one.ws, one.bs)[1] for b in range(B)])
    w, bb = one.ws[-1].clone().requires_grad_(True), one.bs[-1].clone().requires_grad_(True)
    gw, gb = torch.autograd.grad(F.cross_entropy(tops @ w.T + bb, y), [w, bb])
    return list(grads[: n - 1]) + [gw], list(grads[n - 1 :]) + [gb]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("variant", ["default", "sum_goodness", "unit_length"])
def test_forward_forward_matches_reference(family, variant):
    net, x, y, g = make_case(family)
    rule = get_rule("forward_forward").from_variant(variant, threshold=0.05)
    state = rule.init_state(net, g)
    noise = rule.sample_noise(net, state, B)
    step = rule.step_with_noise(net, state, x, y, noise)
    assert_directions(step, [ref_forward_forward(rule, net, m, x, y, noise) for m in range(M)], variant)


@pytest.mark.parametrize("family", FAMILIES)
def test_forward_forward_normalises_the_first_layers_input_too(family):
    """Hinton 2022: every layer's input is normalised to a fixed length, the first included, so
    scaling the (label-embedded) input changes nothing in the network (with eps = 0)."""
    net, x, y, g = make_case(family)
    _, post = get_rule("forward_forward")(eps=0.0).forward(net, {}, x)
    _, post_scaled = get_rule("forward_forward")(eps=0.0, label_scale=21.0).forward(net, {}, 7.0 * x)
    for a, b in zip(post[1:], post_scaled[1:]):
        # (a unit-free layer, all zero, is 0/0 with eps = 0 alike in both)
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12, equal_nan=True)


def test_forward_forward_predicts_from_the_second_hidden_layer_on():
    """Hinton 2022: the accumulated goodness of all but the first hidden layer."""
    net, x, y, g = make_case("mlp")
    rule = get_rule("forward_forward")()
    scores = rule.predict(net, {}, x)
    for label in range(N_CLASSES):
        labels = torch.full((M, B), label)
        _, branch, _ = rule.layers(net, rule.embedded_input(net, x, labels, N_CLASSES))
        want = sum((r**2).sum(-1) if rule.goodness == "sum" else (r**2).mean(-1) for r in branch[1:])
        torch.testing.assert_close(scores[..., label], want)
    every = get_rule("forward_forward").from_variant("all_layers").predict(net, {}, x)
    assert not torch.allclose(every, scores)


# ----------------------------------------------------------------------------- predictive coding, brainprop, backprop
def ref_predictive_coding(rule, net, m, x, y):
    one = OneNet(net, m)
    xin = x.reshape(-1, *CNN_SHAPE) if one.cnn else x
    n, gamma = one.n, rule.precision
    target = F.one_hot(y, N_CLASSES).double()

    def energy(values, ws, bs):
        h, total = xin, 0.0
        for layer in range(n):
            mu = single_pre(one, layer, h, ws[layer], bs[layer])
            if layer < n - 1:
                total = total + 0.5 * ((values[layer] - mu) ** 2).sum()
                h = h + one.f(values[layer]) if one.skip(layer) else one.f(values[layer])
            elif rule.output_loss == "mse":
                total = total + gamma * 0.5 * ((mu - target) ** 2).sum()
            else:
                total = total + gamma * F.cross_entropy(mu, y, reduction="sum")
        return total

    values, h = [], xin
    for layer in range(n - 1):
        a = single_pre(one, layer, h, one.ws[layer], one.bs[layer])
        values.append(a.detach())
        h = h + one.f(a) if one.skip(layer) else one.f(a)
    for _ in range(rule.inference_steps):
        leaves = [v.clone().requires_grad_(True) for v in values]
        grads = torch.autograd.grad(energy(leaves, one.ws, one.bs), leaves)
        values = [v - rule.inference_rate * gv for v, gv in zip(values, grads)]
    wl = [w.clone().requires_grad_(True) for w in one.ws]
    bl = [b.clone().requires_grad_(True) for b in one.bs]
    grads = torch.autograd.grad(energy(values, wl, bl), [*wl, *bl])
    return [g / (gamma * B) for g in grads[:n]], [g / (gamma * B) for g in grads[n:]]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("variant", ["default", "mse_output", "short_inference"])
def test_predictive_coding_matches_reference(family, variant):
    net, x, y, g = make_case(family, activation="tanh")
    rule = get_rule("predictive_coding").from_variant(variant, precision=0.7)
    step = rule.step(net, rule.init_state(net, g), x, y)
    assert_directions(step, [ref_predictive_coding(rule, net, m, x, y) for m in range(M)], variant)


def ref_brainprop(rule, net, state, m, x, y, noise):
    """The attention-gated update written as the hand-made backward pass of one network."""
    one = OneNet(net, m)
    fbs = [fb[m] for fb in state["feedback"]] if "feedback" in state else one.ws
    dws = [torch.zeros_like(w) for w in one.ws]
    dbs = [torch.zeros_like(b) for b in one.bs]
    for b, (pres, posts) in enumerate(one.forward(x)):
        q = posts[-1]
        if noise[0][m, b] < rule.epsilon and rule.exploration == "uniform":
            a = min(int(noise[1][m, b] * N_CLASSES), N_CLASSES - 1)
        elif noise[0][m, b] < rule.epsilon:
            cdf = torch.cumsum(torch.softmax(q / rule.temperature, 0), 0)
            a = next((i for i in range(len(cdf)) if cdf[i] >= noise[1][m, b]), len(cdf) - 1)
        else:
            a = int(q.argmax())
        rpe = float(a == int(y[b])) - float(q[a])
        g = F.one_hot(torch.tensor(a), N_CLASSES).double()  # gated feedback at the output
        for layer in range(one.n - 1, -1, -1):
            if layer < one.n - 1:
                g = one.df(pres[layer]) * arriving
            h = posts[layer]
            # the gradient of <g, pre(h)> in W and b: the gated Hebbian product of the layer
            w = one.ws[layer].clone().requires_grad_(True)
            bb = one.bs[layer].clone().requires_grad_(True)
            gw, gb = torch.autograd.grad((g * one.pre(layer, h, w, bb).reshape(g.shape)).sum(), [w, bb])
            dws[layer] -= rpe * gw / B
            dbs[layer] -= rpe * gb / B
            if layer > 0:
                hl = h.clone().requires_grad_(True)
                fb_pre = one.pre(layer, hl, fbs[layer], torch.zeros_like(one.bs[layer]))
                (down,) = torch.autograd.grad((g * fb_pre.reshape(g.shape)).sum(), hl)
                arriving = down + arriving if one.skip(layer) else down
    return dws, dbs


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("variant", ["default", "uniform_exploration", "random_feedback"])
def test_brainprop_matches_reference(family, variant):
    net, x, y, g = make_case(family)
    kwargs = {"feedback": "random"} if variant == "random_feedback" else {}
    rule = get_rule("brainprop").from_variant("default" if variant == "random_feedback" else variant,
                                              epsilon=0.5, **kwargs)
    state = rule.init_state(net, g)
    noise = rule.sample_noise(net, state, B)
    step = rule.step_with_noise(net, state, x, y, noise)
    assert_directions(step, [ref_brainprop(rule, net, state, m, x, y, noise) for m in range(M)], variant)


@pytest.mark.parametrize("family", FAMILIES)
def test_backprop_sigmoid_mse_variant_matches_reference(family):
    net, x, y, g = make_case(family, activation="tanh")
    rule = get_rule("backprop").from_variant("sigmoid_mse")
    step = rule.step(net, {}, x, y)
    refs = []
    for m in range(M):
        one = OneNet(net, m)
        wl = [w.clone().requires_grad_(True) for w in one.ws]
        bl = [b.clone().requires_grad_(True) for b in one.bs]
        total = 0.0
        for xb, yb in zip(x, y):
            h = xb.reshape(CNN_SHAPE) if one.cnn else xb
            for layer in range(one.n):
                a = one.pre(layer, h, wl[layer], bl[layer])
                h = a if layer == one.n - 1 else (h + one.f(a) if one.skip(layer) else one.f(a))
            total = total + 0.5 * ((torch.sigmoid(h) - F.one_hot(yb, N_CLASSES).double()) ** 2).sum() / B
        grads = torch.autograd.grad(total, [*wl, *bl])
        refs.append((grads[: one.n], grads[one.n :]))
    assert_directions(step, refs)
    assert rule.output_units == "sigmoid"


def test_every_rule_here_has_documented_variants_and_every_architecture():
    mine = ["backprop", "hebbian", "krotov_hopfield", "equilibrium_propagation", "predictive_coding",
            "brainprop", "forward_forward"]
    rules = all_rules()
    for rid in mine:
        cls = rules[rid]
        assert set(cls.supports) == {"mlp", "resmlp", "cnn"}, rid
        assert len(cls.variants) >= 3 and "default" in cls.variants, rid
        for name, variant in cls.variants.items():
            assert variant.description, (rid, name)
            cls.from_variant(name)  # every variant constructs


# ----------------------------------------------------------------------------- recorder: output units
def recorded(rule, family="mlp"):
    import numpy as np  # noqa: F401

    from rulefinder.vocabulary import METADATA_KEYS
    from training_zoo.recorder import Recorder

    net, x, y, g = make_case(family, activation="tanh", init_scale=0.5)
    net.weights = [w.float() for w in net.weights]
    net.biases = [b.float() for b in net.biases]
    state = rule.init_state(net, g)
    rec = Recorder(net, x.float(), units_per_layer=3, seed=1)
    for step in range(3):
        rec.record(step, net, torch.zeros(M), torch.zeros(M), rule=rule, state=state)
    meta = [{k: "x" for k in METADATA_KEYS} | {"hyperparameters": {}} for _ in range(M)]
    return net, x.float(), state, rec, rec.records([f"n{i}" for i in range(M)], meta)


def output_area(record):
    import numpy as np

    return record.recording.values[..., np.asarray(record.recording.coords["unit_area"].values == "output")]


def test_recorder_records_energy_model_output_neurons_and_keeps_their_preactivations():
    from training_zoo.recorder import with_output_preactivation

    rule = get_rule("equilibrium_propagation")()
    net, x, state, rec, records = recorded(rule)
    pre, post = rule.forward(net, state, x)
    for m, r in enumerate(records):
        idx = rec.unit_index[-1][m]
        assert r.recording.attrs["output_units"] == "energy_output"
        assert r.metadata["output_units"] == "energy_output"
        torch.testing.assert_close(torch.as_tensor(output_area(r)[-1]).float(), post[-1][m][:, idx])
        swapped = with_output_preactivation(r)
        torch.testing.assert_close(torch.as_tensor(output_area(swapped)[-1]).float(), pre[-1][m][:, idx],
                                   rtol=1e-5, atol=1e-6)
        assert swapped.recording.attrs["output_units"] == "preactivation"


@pytest.mark.parametrize("variant,units", [("default", "logits"), ("softmax_units", "softmax"),
                                           ("sigmoid_mse", "sigmoid")])
@pytest.mark.parametrize("family", ["mlp", "cnn"])
def test_recorder_records_what_the_output_units_are(variant, units, family):
    rule = get_rule("backprop").from_variant(variant)
    net, x, state, rec, records = recorded(rule, family)
    z = net.forward(x)[1][-1]
    act = {"logits": z, "softmax": torch.softmax(z, -1), "sigmoid": torch.sigmoid(z)}[units]
    for m, r in enumerate(records):
        idx = rec.unit_index[-1][m]
        assert r.recording.attrs["output_units"] == units
        torch.testing.assert_close(torch.as_tensor(output_area(r)[-1]).float(), act[m][:, idx])
        assert ("output_preactivation" in r.extras) == (units != "logits")
