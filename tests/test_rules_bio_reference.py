"""Each biologically motivated rule's batched update equals a slow per-network reference.

The references below are written independently of the batched code: one network at a time,
plain loops over examples or autograd on the rule's stated objective. Tiny float64 networks,
``mlp`` and ``resmlp`` (the 6-6-6 hidden layers of the resmlp carry identity skips).
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from training_zoo.dense import DenseStack
from training_zoo.rules import get_rule

SIZES = [7, 6, 6, 6, 4]
M, B = 3, 5
TOL = dict(rtol=1e-5, atol=1e-7)


def make_case(residual: bool, activation: str = "tanh", init_scale: float = 1.0, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    net = DenseStack(SIZES, M, activation=activation, residual=residual, init_scale=init_scale,
                     generator=g, dtype=torch.float64)
    x = torch.randn(B, SIZES[0], generator=g, dtype=torch.float64)
    y = torch.randint(0, SIZES[-1], (B,), generator=g)
    return net, x, y, g


def params_of(net, m, grad=False):
    ws = [w[m].clone().requires_grad_(grad) for w in net.weights]
    bs = [b[m].clone().requires_grad_(grad) for b in net.biases]
    return ws, bs


def skips(net):
    return [net.is_skip(layer) for layer in range(net.n_layers)]


def forward_one(ws, bs, x, f, skip):
    """Single-network forward: returns pre-activations and activities (post[0] = x)."""
    pre, post, h = [], [x], x
    for layer, (w, b) in enumerate(zip(ws, bs)):
        a = h @ w.T + b
        if layer == len(ws) - 1:
            h = a
        else:
            h = h + f(a) if skip[layer] else f(a)
        pre.append(a)
        post.append(h)
    return pre, post


def assert_step_matches(step, refs):
    for layer in range(len(step.weights)):
        got_w = step.weights[layer]
        got_b = step.biases[layer]
        want_w = torch.stack([r[0][layer] for r in refs])
        want_b = torch.stack([r[1][layer] for r in refs])
        torch.testing.assert_close(got_w, want_w, **TOL, msg=f"weights of layer {layer}")
        torch.testing.assert_close(got_b, want_b, **TOL, msg=f"biases of layer {layer}")


RESIDUAL = [pytest.param(False, id="mlp"), pytest.param(True, id="resmlp")]


# ----------------------------------------------------------------------------- node perturbation
def ref_node_perturbation(rule, net, m, x, y, noise):
    ws, bs = params_of(net, m)
    f, skip = net.activation.f, skips(net)
    sigma = rule.sigma
    k_samples = noise[0].shape[1] // B  # all draws, stacked along the batch
    # each layer averages over the draws that perturb it (all of them, or its own if layerwise)
    per_layer = [rule.samples if rule.layerwise else k_samples] * len(ws)
    clean = F.cross_entropy(forward_one(ws, bs, x, f, skip)[1][-1], y, reduction="none")
    dw = [torch.zeros_like(w) for w in ws]
    db = [torch.zeros_like(b) for b in bs]
    for k in range(k_samples):
        for b in range(B):
            h, ins, xis = x[b], [], []
            for layer in range(len(ws)):
                xi = noise[layer][m, k * B + b]
                ins.append(h)
                xis.append(xi)
                a = ws[layer] @ h + bs[layer] + xi
                h = a if layer == len(ws) - 1 else (h + f(a) if skip[layer] else f(a))
            loss = F.cross_entropy(h.unsqueeze(0), y[b : b + 1])
            for layer in range(len(ws)):
                c = (loss - clean[b]) / sigma**2 / (B * per_layer[layer])
                dw[layer] += c * torch.outer(xis[layer], ins[layer])
                db[layer] += c * xis[layer]
    return dw, db


@pytest.mark.parametrize("layerwise", [True, False], ids=["layerwise", "joint"])
@pytest.mark.parametrize("residual", RESIDUAL)
def test_node_perturbation_matches_reference(residual, layerwise):
    net, x, y, g = make_case(residual)
    rule = get_rule("node_perturbation")(sigma=0.05, samples=3, layerwise=layerwise)
    state = rule.init_state(net, g)
    noise = rule.sample_noise(net, state, B)
    step = rule.step_with_noise(net, state, x, y, noise)
    assert_step_matches(step, [ref_node_perturbation(rule, net, m, x, y, noise) for m in range(M)])


# ----------------------------------------------------------------------------- brainprop
def ref_brainprop(rule, net, m, x, y, noise):
    ws, bs = params_of(net, m, grad=True)
    q = forward_one(ws, bs, x, net.activation.f, skips(net))[1][-1]
    u_explore, u_draw = noise[0][m], noise[1][m]
    actions = []
    for b in range(B):
        if u_explore[b] < rule.epsilon:
            cdf = torch.cumsum(torch.softmax(q[b].detach() / rule.temperature, 0), 0)
            a = next((i for i in range(len(cdf)) if cdf[i] >= u_draw[b]), len(cdf) - 1)
        else:
            a = int(q[b].argmax())
        actions.append(a)
    objective = 0.0
    for b, a in enumerate(actions):
        rpe = float(a == int(y[b])) - q[b, a].detach()
        objective = objective - rpe * q[b, a] / B  # gradient of this = attention-gated update
    grads = torch.autograd.grad(objective, [*ws, *bs])
    n = len(ws)
    return list(grads[:n]), list(grads[n:])


@pytest.mark.parametrize("residual", RESIDUAL)
def test_brainprop_matches_reference(residual):
    net, x, y, g = make_case(residual)
    rule = get_rule("brainprop")(epsilon=0.5)  # explore often so both branches are exercised
    state = rule.init_state(net, g)
    noise = rule.sample_noise(net, state, B)
    step = rule.step_with_noise(net, state, x, y, noise)
    assert_step_matches(step, [ref_brainprop(rule, net, m, x, y, noise) for m in range(M)])


# ----------------------------------------------------------------------------- hebbian
def ref_readout(ws, bs, hidden, y):
    w, b = ws[-1].clone().requires_grad_(True), bs[-1].clone().requires_grad_(True)
    loss = F.cross_entropy(hidden @ w.T + b, y)
    return torch.autograd.grad(loss, [w, b])


# ----------------------------------------------------------------------------- predictive coding
def ref_predictive_coding(rule, net, m, x, y):
    ws, bs = params_of(net, m)
    f, skip = net.activation.f, skips(net)
    n = len(ws)
    gamma = rule.precision

    def energy(values, ws, bs):
        h, total = x, 0.0
        for layer in range(n):
            mu = h @ ws[layer].T + bs[layer]
            if layer < n - 1:
                total = total + 0.5 * ((values[layer] - mu) ** 2).sum()
                h = h + f(values[layer]) if skip[layer] else f(values[layer])
            else:
                total = total + gamma * F.cross_entropy(mu, y, reduction="sum")
        return total

    values = [a.detach().clone() for a in forward_one(ws, bs, x, f, skip)[0][:-1]]
    for _ in range(rule.inference_steps):
        leaves = [v.clone().requires_grad_(True) for v in values]
        grads = torch.autograd.grad(energy(leaves, ws, bs), leaves)
        values = [v - rule.inference_rate * gv for v, gv in zip(values, grads)]
    wl = [w.clone().requires_grad_(True) for w in ws]
    bl = [b.clone().requires_grad_(True) for b in bs]
    grads = torch.autograd.grad(energy(values, wl, bl), [*wl, *bl])
    scale = 1.0 / (gamma * B)
    return [gw * scale for gw in grads[:n]], [gb * scale for gb in grads[n:]]


@pytest.mark.parametrize("residual", RESIDUAL)
def test_predictive_coding_matches_reference(residual):
    net, x, y, g = make_case(residual)
    rule = get_rule("predictive_coding")(inference_steps=7, inference_rate=0.2, precision=0.7)
    step = rule.step(net, rule.init_state(net, g), x, y)
    assert_step_matches(step, [ref_predictive_coding(rule, net, m, x, y) for m in range(M)])


# ----------------------------------------------------------------------------- equilibrium propagation
def ref_equilibrium_propagation(rule, net, m, x, y, steps):
    ws, bs = params_of(net, m)
    f, skip = net.activation.f, skips(net)
    n = len(ws)

    def phi(states, ws, bs, beta):
        """Sum_l r_l . (W_l h_l + b_l) - beta * CE: minus the energy, up to the G(r) terms."""
        h, total = x, 0.0
        for layer in range(n - 1):
            total = total + (states[layer] * (h @ ws[layer].T + bs[layer])).sum()
            h = h + states[layer] if skip[layer] else states[layer]
        z = h @ ws[-1].T + bs[-1]
        return total - beta * F.cross_entropy(z, y, reduction="sum")

    def relax(states, beta):
        for _ in range(steps):
            for layer in range(n - 1):  # Gauss-Seidel: exact minimisation in one layer at a time
                leaf = states[layer].clone().requires_grad_(True)
                trial = states[:layer] + [leaf] + states[layer + 1 :]
                (drive,) = torch.autograd.grad(phi(trial, ws, bs, beta), leaf)
                states = states[:layer] + [f(drive).detach()] + states[layer + 1 :]
        return states

    ff = [f(a) for a in forward_one(ws, bs, x, f, skip)[0][:-1]]  # feedforward start (tanh, no skip in r)
    free = relax(ff, 0.0)
    beta = rule.beta
    out = []
    for sign in (1.0, -1.0):
        states = relax(free, sign * beta)
        wl = [w.clone().requires_grad_(True) for w in ws]
        bl = [b.clone().requires_grad_(True) for b in bs]
        out.append(torch.autograd.grad(-phi(states, wl, bl, sign * beta), [*wl, *bl]))
    grads = [(p - q) / (2 * beta * B) for p, q in zip(*out)]
    return grads[:n], grads[n:]


@pytest.mark.parametrize("residual", RESIDUAL)
def test_equilibrium_propagation_matches_reference(residual):
    net, x, y, g = make_case(residual, init_scale=0.5)
    steps = 60
    rule = get_rule("equilibrium_propagation")(beta=0.3, free_steps=steps, nudge_steps=steps, state_bound=None,
                                               output="softmax_readout", init="feedforward")
    step = rule.step(net, rule.init_state(net, g), x, y)
    assert_step_matches(step, [ref_equilibrium_propagation(rule, net, m, x, y, steps) for m in range(M)])


# ----------------------------------------------------------------------------- target propagation
def ref_target_propagation(rule, net, state0, m, x, y, noise):
    ws, bs = params_of(net, m)
    f, skip = net.activation.f, skips(net)
    n = len(ws)
    vs = [v[m].clone() for v in state0["feedback_weights"]]
    cs = [c[m].clone() for c in state0["feedback_biases"]]

    def layer_fwd(layer, h, w=None, b=None):
        a = h @ (ws[layer] if w is None else w).T + (bs[layer] if b is None else b)
        if layer == n - 1:  # the readout is linear
            return a
        return h + f(a) if skip[layer] else f(a)

    def inverse(k, h, v, c):
        a = h @ v.T + c
        return h + a if skip[k] else f(a)

    _, post = forward_one(ws, bs, x, f, skip)
    top = n if rule.target_layer == "output" else n - 1  # Meulemans et al. 2020 / Lee et al. 2015
    for k in range(1, top):  # one normalised-LMS step per inverse, by autograd
        h_noisy = post[k] + noise[k - 1][m]
        fwd = layer_fwd(k, h_noisy)
        v, c = vs[k - 1].clone().requires_grad_(True), cs[k - 1].clone().requires_grad_(True)
        loss = 0.5 * ((inverse(k, fwd, v, c) - h_noisy) ** 2).sum(1).mean()
        gv, gc = torch.autograd.grad(loss, [v, c])
        lr = rule.feedback_lr / (1.0 + (fwd**2).sum(1).mean())
        vs[k - 1], cs[k - 1] = vs[k - 1] - lr * gv, cs[k - 1] - lr * gc
    h_top = post[top].clone().requires_grad_(True)
    z = h_top if top == n else h_top @ ws[-1].T + bs[-1]
    (g_top,) = torch.autograd.grad(F.cross_entropy(z, y, reduction="sum"), h_top)
    targets = {top: post[top] - rule.target_step * g_top}
    for k in range(top - 1, 0, -1):
        targets[k] = post[k] + inverse(k, targets[k + 1], vs[k - 1], cs[k - 1]) - inverse(k, post[k + 1], vs[k - 1], cs[k - 1])
    dw, db = [], []
    for layer in range(n - 1):
        w, b = ws[layer].clone().requires_grad_(True), bs[layer].clone().requires_grad_(True)
        local = 0.5 * ((layer_fwd(layer, post[layer].detach(), w, b) - targets[layer + 1]) ** 2).sum()
        gw, gb = torch.autograd.grad(local, [w, b])
        dw.append(gw / (rule.target_step * B))
        db.append(gb / (rule.target_step * B))
    gw, gb = ref_readout(ws, bs, post[-2], y)
    return (dw + [gw], db + [gb]), vs


@pytest.mark.parametrize("target_layer", ["output", "top_hidden"])
@pytest.mark.parametrize("residual", RESIDUAL)
def test_difference_target_propagation_matches_reference(residual, target_layer):
    net, x, y, g = make_case(residual)
    rule = get_rule("difference_target_propagation")(target_step=0.3, noise=0.2, feedback_lr=0.7,
                                                     target_layer=target_layer)
    state = rule.init_state(net, g)
    state0 = copy.deepcopy(state)
    noise = rule.sample_noise(net, state, B)
    step = rule.step_with_noise(net, state, x, y, noise)
    refs = [ref_target_propagation(rule, net, state0, m, x, y, noise) for m in range(M)]
    assert_step_matches(step, [r[0] for r in refs])
    for k, v in enumerate(state["feedback_weights"]):  # the inverses learned the same way
        torch.testing.assert_close(v, torch.stack([r[1][k] for r in refs]), **TOL)


# ----------------------------------------------------------------------------- burstprop
def ref_burstprop(rule, net, state, m, x, y):
    """Returns ((dw, db), Z after its update) for network m: teacher-off and teacher-on passes."""
    ws, bs = params_of(net, m)
    f, df, skip = net.activation.f, net.activation.df, skips(net)
    n = len(ws)
    ys = [Y[m] if Y is not None else None for Y in state["feedback"]] if "feedback" in state else ws
    p_bar = rule.baseline_burst_probability
    if rule.cancellation == "learned":
        zs = [Z[m].clone() if Z is not None else None for Z in state["recurrent"]]
    else:
        zs = [None] + [p_bar * Y for Y in ys[1:]]
    pre, post = forward_one(ws, bs, x, f, skip)
    alpha = torch.log(torch.tensor(p_bar / (1 - p_bar), dtype=x.dtype))
    gain = p_bar * (1 - p_bar) * rule.beta
    out_events = torch.softmax(post[-1], 1)
    teacher = F.one_hot(y, SIZES[-1]).double() - out_events
    events = {n - 1: out_events}
    for layer in range(n - 1):
        events[layer] = f(pre[layer]).abs()

    def top_down(out_bursts):
        bursts, probs = {n - 1: out_bursts}, {}
        for layer in range(n - 2, -1, -1):
            apical = torch.zeros_like(pre[layer])
            above = layer + 1
            while True:  # feedback from the layer above and, along skips, from layers further up
                apical = apical + bursts[above] @ ys[above] - events[above] @ zs[above]
                if above < n - 1 and skip[above]:
                    above += 1
                else:
                    break
            e = events[layer]
            u = df(pre[layer]) * apical / e.clamp_min(rule.min_event_rate)
            probs[layer] = torch.sigmoid(rule.beta * u + alpha)
            bursts[layer] = probs[layer] * e
        return probs, bursts

    p_off, b_off = top_down(p_bar * out_events)
    p_on, _ = top_down(p_bar * out_events + teacher)
    dw, db = [None] * n, [None] * n
    dw[n - 1], db[n - 1] = -teacher.T @ post[n - 1] / B, -teacher.mean(0)
    for layer in range(n - 1):
        dev = (p_on[layer] - p_off[layer]) * events[layer]
        dw[layer] = -dev.T @ post[layer] / (gain * B)
        db[layer] = -dev.sum(0) / (gain * B)
    new_z = list(zs)
    if rule.cancellation == "learned":  # LMS on 1/2 ||Y^T b_off - Z^T e||^2, batch mean
        for above in range(1, n):
            z = zs[above].clone().requires_grad_(True)
            r = b_off[above] @ ys[above] - events[above] @ z
            (g,) = torch.autograd.grad(0.5 * (r**2).sum() / B, z)
            lr = rule.recurrent_lr / (1 + (events[above] ** 2).sum(1).mean())
            new_z[above] = zs[above] - lr * g
    return (dw, db), new_z


@pytest.mark.parametrize("variant", ["default", "symmetric", "exact_cancellation"])
@pytest.mark.parametrize("residual", RESIDUAL)
def test_burstprop_matches_reference(residual, variant):
    net, x, y, g = make_case(residual, activation="relu")
    rule = get_rule("burstprop").from_variant(variant, beta=2.0)
    state = rule.init_state(net, g)
    refs = [ref_burstprop(rule, net, state, m, x, y) for m in range(M)]
    step = rule.step(net, state, x, y)
    assert_step_matches(step, [r[0] for r in refs])
    if rule.cancellation == "learned":  # the recurrent weights learned the same way
        for above in range(1, net.n_layers):
            torch.testing.assert_close(state["recurrent"][above], torch.stack([r[1][above] for r in refs]), **TOL)


# ----------------------------------------------------------------------------- own forward / predict
@pytest.mark.parametrize("rule_id", ["equilibrium_propagation", "forward_forward"])
@pytest.mark.parametrize("residual", RESIDUAL)
def test_rules_with_their_own_network_evaluation_keep_the_densestack_layout(rule_id, residual):
    """Rules whose network is not DenseStack.forward expose ``forward`` (for recordings) and
    ``predict`` (for accuracy) with the same shapes as the plain network."""
    net, x, y, g = make_case(residual, activation="relu")
    rule = get_rule(rule_id)()
    state = rule.init_state(net, g)
    pre, post = rule.forward(net, state, x)
    ref_pre, ref_post = net.forward(x)
    assert [t.shape for t in pre] == [t.shape for t in ref_pre]
    assert [t.shape for t in post] == [t.shape for t in ref_post]
    torch.testing.assert_close(post[0], net.broadcast_input(x))
    scores = rule.predict(net, state, x)
    assert scores.shape == (M, B, SIZES[-1]) and torch.isfinite(scores).all()
    if rule_id == "equilibrium_propagation":  # its prediction is the free fixed point's readout
        torch.testing.assert_close(scores, post[-1])


@pytest.mark.parametrize("rule_id", ["node_perturbation", "brainprop", "difference_target_propagation",
                                     "forward_forward"])
def test_stochastic_rules_are_deterministic_for_a_seed(rule_id):
    """All noise comes from the generator that init_state derives from the caller's seed."""
    steps = []
    for _ in range(2):
        net, x, y, _ = make_case(True, activation="relu")
        rule = get_rule(rule_id)()
        state = rule.init_state(net, torch.Generator().manual_seed(7))
        steps.append([rule.step(net, state, x, y) for _ in range(2)][-1])
    for a, b in zip([*steps[0].weights, *steps[0].biases], [*steps[1].weights, *steps[1].biases]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
