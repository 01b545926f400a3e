"""The feedback-alignment family, target propagation, burstprop and node perturbation are the
rules their papers (and authors' code) define; each test here failed on the code as of 8379dfa.

Also: every rule of these files has at least two implementation variants, every variant runs
on ``mlp``, ``resmlp`` and ``cnn``, and cnn updates equal per-network references.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from training_zoo.architectures import PopulationCNN, build_network
from training_zoo.dense import DenseStack
from training_zoo.rules import get_rule
from training_zoo.tasks import load_task
from training_zoo.trainer import train_population

F64 = torch.float64
MY_RULES = ["feedback_alignment", "direct_feedback_alignment", "sign_symmetry", "kolen_pollack",
            "weight_mirror", "information_alignment", "difference_target_propagation", "burstprop",
            "node_perturbation"]


@pytest.fixture(scope="module")
def digits():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small ops on a shared machine
    yield load_task("digits")
    torch.set_num_threads(threads)


def dense(sizes=(20, 64, 48, 10), m=4, residual=False, activation="tanh", seed=0):
    return DenseStack(list(sizes), m, activation=activation, residual=residual,
                      generator=torch.Generator().manual_seed(seed), dtype=F64)


def cnn(m=2, activation="tanh", seed=0):
    return PopulationCNN((1, 6, 6), [2, 3], 3, m, activation=activation,
                         generator=torch.Generator().manual_seed(seed), dtype=F64)


def batch(n_in, b=6, c=None, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, n_in, generator=g, dtype=F64), torch.randint(0, c, (b,), generator=g)


# ----------------------------------------------------------------------------- feedback scales
def test_feedback_alignment_draws_feedback_at_the_glorot_scale():
    net = dense()
    state = get_rule("feedback_alignment")().init_state(net, torch.Generator().manual_seed(0))
    for w, b in zip(net.weights[1:], state["B"][1:]):
        n_out, n_in = w.shape[1:]
        bound = math.sqrt(6.0 / (n_in + n_out))
        assert float(b.abs().max()) <= bound
        assert float(b.std()) == pytest.approx(bound / math.sqrt(3), rel=0.05)


def test_direct_feedback_alignment_draws_feedback_at_the_glorot_scale():
    net = dense(m=8)
    state = get_rule("direct_feedback_alignment")().init_state(net, torch.Generator().manual_seed(0))
    for d in state["D"]:
        n_classes, units = d.shape[1:]
        assert float(d.std()) == pytest.approx(math.sqrt(2.0 / (n_classes + units)), rel=0.05)


def test_feedback_init_variants_differ_in_scale():
    net = dense()
    cls = get_rule("feedback_alignment")
    std = {v: float(cls.from_variant(v).init_state(net, torch.Generator().manual_seed(0))["B"][1].std())
           for v in ("default", "fan_in_feedback", "gaussian_feedback")}
    fan_in = net.weights[1].shape[-1]
    assert std["fan_in_feedback"] == pytest.approx(1 / math.sqrt(3 * fan_in), rel=0.05)
    assert std["gaussian_feedback"] == pytest.approx(math.sqrt(2 / fan_in), rel=0.05)


def test_sign_symmetry_feedback_has_a_fixed_scale_not_the_weights_magnitude():
    """uSF (Liao et al. 2016): B = s sign(W) with s fixed, so scaling W leaves B unchanged."""
    net = dense()
    rule = get_rule("sign_symmetry")()
    state = rule.init_state(net, torch.Generator().manual_seed(0))
    before = rule.feedback(net, state)
    for w in net.weights:
        w.mul_(3.0)
    after = rule.feedback(net, state)
    for layer in range(1, net.n_layers):
        torch.testing.assert_close(before[layer], after[layer])
        n_out, n_in = net.weights[layer].shape[1:]
        torch.testing.assert_close(before[layer].abs(), torch.full_like(before[layer], math.sqrt(2 / (n_in + n_out))))
        assert torch.equal(torch.sign(before[layer]), torch.sign(net.weights[layer]))


def test_sign_symmetry_frsf_fixed_and_brsf_batchwise_random_magnitudes():
    net = dense()
    x, y = batch(20, c=10)
    cls = get_rule("sign_symmetry")
    for variant, fixed in (("frsf", True), ("brsf", False)):
        rule = cls.from_variant(variant)
        state = rule.init_state(net, torch.Generator().manual_seed(0))
        fb1 = rule.feedback(net, state)
        fb2 = rule.feedback(net, state)
        for layer in range(1, net.n_layers):
            assert torch.equal(torch.sign(fb1[layer]), torch.sign(net.weights[layer]))
            assert fb1[layer].abs().std() > 0  # random magnitudes, not one scale
            assert torch.equal(fb1[layer], fb2[layer]) == fixed
        rule.step(net, state, x, y)


# ----------------------------------------------------------------------------- Kolen-Pollack
def heavy_ball(lr, lam, steps, mu=0.9):
    """||W - B|| / ||W_0 - B_0|| under momentum: v_t = mu v_{t-1} + lam c_t, c_{t+1} = c_t - lr v_t."""
    c, v = 1.0, 0.0
    for t in range(steps):
        v = (mu * v if t else 0.0) + lam * c
        c -= lr * v
    return c


@pytest.mark.parametrize("optimizer,lr,family", [("sgd", 0.1, "mlp"), ("momentum", 0.02, "mlp"), ("adam", 1e-3, "mlp"),
                                                  ("sgd", 0.1, "cnn"), ("momentum", 0.02, "cnn")])
def test_kolen_pollack_difference_decays_geometrically_through_the_shared_optimizer(digits, optimizer, lr, family):
    """Akrout et al. 2019: W and B get the same update and weight decay through the same
    optimizer, so W - B obeys the optimizer's linear recurrence on lambda ||D||^2 / 2."""
    lam, steps = 0.1, 60
    ratios = []
    runs = [(steps // 2, lam), (steps, lam)] + ([(steps, 0.0)] if optimizer == "adam" else [])
    for t, decay in runs:
        net = build_network({"family": family, "depth": 2, "width": 32, "channels": [4, 8]},
                            digits.input_shape, digits.n_classes, 2, generator=torch.Generator().manual_seed(0))
        rule = get_rule("kolen_pollack")(weight_decay=decay)
        b0 = rule.init_state(net, torch.Generator().manual_seed(0))["B"]  # what the trainer draws for seed 0
        d0 = [(w - b).reshape(2, -1).norm(dim=1) for w, b in zip(net.weights[1:], b0[1:])]
        res = train_population(rule, net, digits, optimizer, lr=lr, max_steps=t, seed=0, final_eval=False)
        ratios.append(torch.stack([(w - b).reshape(2, -1).norm(dim=1) / n0
                                   for w, b, n0 in zip(net.weights[1:], res["state"]["B"][1:], d0)]))
    if optimizer == "sgd":
        torch.testing.assert_close(ratios[1], torch.full_like(ratios[1], (1 - lr * lam) ** steps), rtol=1e-4, atol=0)
    elif optimizer == "momentum":
        torch.testing.assert_close(ratios[1], torch.full_like(ratios[1], heavy_ball(lr, lam, steps)), rtol=1e-3, atol=0)
    else:  # Adam: element-wise rate lr lam / sqrt(v): shrinks steadily, no closed form ...
        assert (ratios[1] < ratios[0]).all() and (ratios[0] < 1).all() and (ratios[1] < 0.9).all(), ratios
        # ... and without decay W and B get the very same Adam steps: the difference stays put
        torch.testing.assert_close(ratios[2], torch.ones_like(ratios[2]), rtol=1e-5, atol=0)


def test_kolen_pollack_separate_sgd_variant_keeps_b_out_of_the_optimizer(digits):
    net = build_network({"family": "mlp", "depth": 2, "width": 32}, digits.input_shape, digits.n_classes, 2,
                        generator=torch.Generator().manual_seed(0))
    rule = get_rule("kolen_pollack").from_variant("separate_sgd")
    res = train_population(rule, net, digits, "adam", lr=1e-3, max_steps=3, seed=0, final_eval=False)
    assert type(res["state"]["B_optimizer"]).__name__ == "SGD"


# ----------------------------------------------------------------------------- node perturbation
def test_node_perturbation_default_perturbs_every_layer_in_one_noisy_pass():
    net = dense()
    rule = get_rule("node_perturbation")()
    assert rule.sigma <= 0.01 and not rule.layerwise
    state = rule.init_state(net, torch.Generator().manual_seed(0))
    assert rule.draws(net) == 1
    noise = rule.sample_noise(net, state, 6)
    for xi in noise:
        assert xi.shape[1] == 6 and bool((xi != 0).all())  # one pass, every node of every layer


def test_node_perturbation_estimates_the_gradient_in_expectation():
    """Averaged over many draws, the canonical estimate approaches backprop's gradient."""
    net = dense(sizes=(6, 5, 4), m=1)
    x, y = batch(6, b=4, c=4)
    rule = get_rule("node_perturbation")(samples=4000)
    state = rule.init_state(net, torch.Generator().manual_seed(0))
    est = rule.step(net, state, x, y)
    bp = get_rule("backprop")().step(net, {}, x, y)
    for a, b in zip(est.weights, bp.weights):
        cos = F.cosine_similarity(a.flatten(), b.flatten(), dim=0)
        assert cos > 0.9, cos


# ----------------------------------------------------------------------------- target propagation
def test_dtp_default_with_one_hidden_layer_is_not_the_gradient():
    """Meulemans et al. 2020: the target is set on the output and reaches the single hidden
    layer through the learned inverse of the readout, so the update is not backprop's.
    Lee et al. 2015's form (gradient target on the top hidden layer) is backprop exactly."""
    net = dense(sizes=(20, 16, 10), m=3)
    x, y = batch(20, b=8, c=10)
    bp = get_rule("backprop")().step(net, {}, x, y)
    cls = get_rule("difference_target_propagation")
    steps = {}
    for variant in ("default", "lee2015"):
        rule = cls.from_variant(variant)
        state = rule.init_state(net, torch.Generator().manual_seed(0))
        steps[variant] = rule.step(net, state, x, y)
    torch.testing.assert_close(steps["lee2015"].weights[0], bp.weights[0])
    for i in range(net.m):
        cos = F.cosine_similarity(steps["default"].weights[0][i].flatten(), bp.weights[0][i].flatten(), dim=0)
        assert cos < 0.99, cos
    torch.testing.assert_close(steps["default"].weights[-1], bp.weights[-1])  # readout: CE gradient


@pytest.mark.parametrize("family", ["mlp", "cnn"])
def test_dtp_default_trains_every_inverse_by_its_reconstruction_loss(family):
    if family == "mlp":
        net, n_in, n_out = dense(sizes=(20, 16, 10), m=2), 20, 10
    else:  # inverses of the second conv layer (transposed conv) and of the readout
        net, n_in, n_out = cnn(m=2), 36, 3
    rule = get_rule("difference_target_propagation")()
    state = rule.init_state(net, torch.Generator().manual_seed(0))
    assert [v.shape[1:] for v in state["feedback_weights"]] == (
        [(16, 10)] if family == "mlp" else [net.weights[1].shape[1:], (net.weights[2].shape[2], 3)])
    g = torch.Generator().manual_seed(3)
    losses = []
    for _ in range(120):
        x = torch.randn(16, n_in, generator=g, dtype=F64)
        losses.append(rule.step(net, state, x, torch.randint(0, n_out, (16,), generator=g)).extras["reconstruction_loss"])
    assert (torch.stack(losses[-20:]).mean(0) < 0.85 * torch.stack(losses[:20]).mean(0)).all()


# ----------------------------------------------------------------------------- burstprop
def test_burstprop_default_uses_fixed_random_feedback_and_learned_cancellation():
    net = dense(activation="sigmoid")
    x, y = batch(20, c=10)
    rule = get_rule("burstprop")()
    state = rule.init_state(net, torch.Generator().manual_seed(0))
    y_before = [None] + [t.clone() for t in state["feedback"][1:]]
    z_before = [None] + [t.clone() for t in state["recurrent"][1:]]
    for layer in range(1, net.n_layers):
        assert state["feedback"][layer].shape == net.weights[layer].shape
        assert not torch.allclose(state["feedback"][layer], net.weights[layer])
    step = rule.step(net, state, x, y)
    sym = get_rule("burstprop").from_variant("symmetric")
    sym_step = sym.step(net, sym.init_state(net, torch.Generator().manual_seed(0)), x, y)
    assert not torch.allclose(step.weights[0], sym_step.weights[0])
    for layer in range(1, net.n_layers):
        assert torch.equal(state["feedback"][layer], y_before[layer])  # Y fixed
        assert not torch.equal(state["recurrent"][layer], z_before[layer])  # Z learns


def test_burstprop_recurrent_weights_learn_to_cancel_the_feedback():
    """Without a teacher the apical input shrinks as Z learns, so p_off -> p_bar."""
    net = dense(activation="sigmoid", m=2)
    rule = get_rule("burstprop")()
    state = rule.init_state(net, torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(3)

    def residual_apical():
        x = torch.randn(64, 20, generator=torch.Generator().manual_seed(9), dtype=F64)
        pre, post = net.forward(x)
        events = [net.activation.f(a).abs() for a in pre[:-1]] + [torch.softmax(post[-1], -1)]
        ys, zs = rule.feedbacks(net, state)
        p_off, raw = rule.apical(net, ys, zs, rule.baseline_burst_probability * events[-1], events, pre)
        return torch.stack([(p - rule.baseline_burst_probability).abs().mean() for p in p_off])

    before = residual_apical()
    for _ in range(150):
        rule.step(net, state, torch.randn(32, 20, generator=g, dtype=F64), torch.randint(0, 10, (32,), generator=g))
    assert (residual_apical() < 0.5 * before).all(), (before, residual_apical())


@pytest.mark.parametrize("variant,feedback", [("symmetric", "W"), ("exact_cancellation", "Y")])
def test_burstprop_cnn_linear_regime_is_backprop_through_its_feedback(variant, feedback):
    """Small beta on a cnn: (p_on - p_off) e = sigma'(alpha) beta f'(a) A, so each layer's
    update is backprop's with W replaced by the feedback Y in the backward pass, times
    gain^(layers below the top hidden one)."""
    net = cnn(activation="tanh")
    x, y = batch(36, b=4, c=3)
    rule = get_rule("burstprop").from_variant(variant, beta=1e-5, cancellation="exact")  # p_off = p_bar
    state = rule.init_state(net, torch.Generator().manual_seed(0))
    fb = net.weights if feedback == "W" else state["feedback"]
    step = rule.step(net, state, x, y)
    from training_zoo.rules.backprop import feedback_gradients

    _, gw, gb = feedback_gradients(net, x, y, [None] + list(fb[1:]))
    gain = rule.baseline_burst_probability * (1 - rule.baseline_burst_probability) * rule.beta
    for layer in range(net.n_layers):
        scale = gain ** max(net.n_layers - 2 - layer, 0)
        for got, want in ((step.weights[layer], gw[layer] * scale), (step.biases[layer], gb[layer] * scale)):
            # first order in beta: the error shrinks with beta (1e-3 at beta = 1e-5)
            assert float((got - want).norm() / want.norm()) < 5e-3, (layer, float((got - want).norm() / want.norm()))


# ----------------------------------------------------------------------------- cnn: population = separate networks
def one_network(net, m):
    """Network ``m`` of a PopulationCNN as a population of one (copied parameters)."""
    single = PopulationCNN(net.input_shape, net.channels, net.shapes[-1][0], 1, activation=net.activation.name,
                           kernel=net.kernel, dtype=net.weights[0].dtype)
    for w, w1, b, b1 in zip(net.weights, single.weights, net.biases, single.biases):
        w1.copy_(w[m : m + 1])
        b1.copy_(b[m : m + 1])
    return single


def slice_state(obj, net, m):
    if isinstance(obj, torch.Tensor):
        if obj.dim() == 4 and obj.shape[1] % net.m == 0 and obj.shape[0] != net.m:  # conv layout (N, M*C, H, W)
            c = obj.shape[1] // net.m
            return obj[:, m * c : (m + 1) * c].clone()
        return obj[m : m + 1].clone() if obj.shape[0] == net.m else obj  # clones: rules update state in place
    if isinstance(obj, list):
        return [slice_state(o, net, m) for o in obj]
    if isinstance(obj, dict):
        return {k: slice_state(v, net, m) for k, v in obj.items()}
    return obj


@pytest.mark.parametrize("rule_id", MY_RULES)
def test_cnn_population_update_equals_each_network_alone(rule_id):
    """Every rule of these files on a cnn population of 3: each network's update is the one it
    gets alone (the grouped convolutions never mix networks)."""
    net = cnn(m=3, activation="tanh")
    x, y = batch(36, b=4, c=3)
    rule = get_rule(rule_id)()
    state = rule.init_state(net, torch.Generator().manual_seed(0))
    noise = rule.sample_noise(net, state, 4) if hasattr(rule, "sample_noise") and rule_id != "sign_symmetry" else None
    if rule_id in ("weight_mirror", "information_alignment"):  # the mirror phase draws noise per step
        pytest.skip("noise drawn inside the step for all networks at once; covered by test_zoo_rules")
    singles = []
    for m in range(net.m):
        one = one_network(net, m)
        st = slice_state(state, net, m)
        if "B_optimizer" in st:
            from training_zoo.optimizers import make_optimizer
            st["B_optimizer"] = make_optimizer("sgd", [b for b in st["B"] if b is not None], rule.feedback_lr)
        singles.append(rule.step_with_noise(one, st, x, y, slice_state(noise, net, m)) if noise is not None
                       else rule.step(one, st, x, y))
    step = rule.step_with_noise(net, state, x, y, noise) if noise is not None else rule.step(net, state, x, y)
    for layer in range(net.n_layers):
        torch.testing.assert_close(step.weights[layer], torch.cat([s.weights[layer] for s in singles]), rtol=1e-6, atol=1e-10)
        torch.testing.assert_close(step.biases[layer], torch.cat([s.biases[layer] for s in singles]), rtol=1e-6, atol=1e-10)


def test_node_perturbation_cnn_matches_a_per_network_loop():
    """Each conv node gets its own noise; the update is the loss change times noise (x) input."""
    net = cnn(m=2, activation="tanh")
    x, y = batch(36, b=3, c=3)
    rule = get_rule("node_perturbation")(sigma=0.05, samples=2)
    state = rule.init_state(net, torch.Generator().manual_seed(0))
    noise = rule.sample_noise(net, state, 3)
    step = rule.step_with_noise(net, state, x, y, noise)
    k, b = 2, 3
    for m in range(net.m):
        ws = [w[m] for w in net.weights]
        bs = [bb[m] for bb in net.biases]
        c1, c2 = net.channels

        def run(xi):
            h0 = x.reshape(b, 1, 6, 6)
            a1 = F.conv2d(h0, ws[0], bs[0], stride=2, padding=1) + xi[0]
            h1 = torch.tanh(a1)
            a2 = F.conv2d(h1, ws[1], bs[1], stride=2, padding=1) + xi[1]
            h2 = torch.tanh(a2)
            z = h2.reshape(b, -1) @ ws[2].T + bs[2] + xi[2]
            return [h0, h1, h2.reshape(b, -1)], F.cross_entropy(z, y, reduction="none")

        _, clean = run([0, 0, 0])
        dw = [torch.zeros_like(w) for w in ws]
        for d in range(k):
            sl = slice(d * b, (d + 1) * b)
            xi = [noise[0][sl, m * c1 : (m + 1) * c1], noise[1][sl, m * c2 : (m + 1) * c2], noise[2][m, sl]]
            ins, loss = run(xi)
            coef = (loss - clean) / (rule.sigma**2 * b * k)
            e = [xi[0] * coef.view(-1, 1, 1, 1), xi[1] * coef.view(-1, 1, 1, 1), xi[2] * coef.view(-1, 1)]
            dw[0] += torch.nn.grad.conv2d_weight(ins[0], ws[0].shape, e[0], stride=2, padding=1)
            dw[1] += torch.nn.grad.conv2d_weight(ins[1], ws[1].shape, e[1], stride=2, padding=1)
            dw[2] += e[2].T @ ins[2]
        for layer in range(3):
            torch.testing.assert_close(step.weights[layer][m], dw[layer], rtol=1e-6, atol=1e-10)


# ----------------------------------------------------------------------------- variants
@pytest.mark.parametrize("rule_id", MY_RULES)
def test_every_variant_runs_on_every_architecture_family(rule_id):
    cls = get_rule(rule_id)
    assert len(cls.variants) >= 3 and set(cls.supports) == {"mlp", "resmlp", "cnn"}  # default + 2
    for variant in cls.variants:
        for family in ("mlp", "resmlp", "cnn"):
            net = build_network({"family": family, "depth": 2, "width": 8, "channels": [2, 3]}, (1, 6, 6), 3, 2,
                                generator=torch.Generator().manual_seed(0), dtype=F64)
            rule = cls.from_variant(variant)
            state = rule.init_state(net, torch.Generator().manual_seed(0))
            x, y = batch(36, b=4, c=3)
            for _ in range(2):
                step = rule.step(net, state, x, y)
            for d, p in zip([*step.weights, *step.biases], net.parameters()):
                assert d.shape == p.shape and torch.isfinite(d).all(), (rule_id, variant, family)


@pytest.mark.parametrize("rule_id", ["node_perturbation", "difference_target_propagation"])
def test_stochastic_rules_draw_noise_for_every_example_of_a_cnn_batch(rule_id):
    net = cnn(m=2)
    x, y = batch(36, b=5, c=3)
    rule = get_rule(rule_id)()
    state = rule.init_state(net, torch.Generator().manual_seed(0))
    seen = []
    original = rule.sample_noise
    rule.sample_noise = lambda n, s, b: seen.append(b) or original(n, s, b)
    rule.step(net, state, x, y)
    assert seen == [5]


@pytest.mark.parametrize("residual", [False, True], ids=["mlp", "resmlp"])
@pytest.mark.parametrize("variant", ["default", "linear_inverses"])
def test_dtp_dense_inverse_step_is_the_reconstruction_gradient(variant, residual):
    """The dense closed-form inverse update equals autograd of the reconstruction loss."""
    import copy

    net = dense(sizes=(7, 6, 6, 4), m=2, residual=residual)
    rule = get_rule("difference_target_propagation").from_variant(variant)
    state = rule.init_state(net, torch.Generator().manual_seed(0))
    x, _ = batch(7, b=5, c=4)
    _, post = net.forward(x)
    noise = rule.sample_noise(net, state, 5)
    before = copy.deepcopy(state)
    rule.train_inverses(net, state, post, noise)
    for k in rule.inverted_layers(net):
        h_noisy = post[k] + noise[k - 1]
        fwd = net.layer_post(k, net.layer_pre(k, h_noisy), h_noisy)
        v = before["feedback_weights"][k - 1].clone().requires_grad_()
        c = before["feedback_biases"][k - 1].clone().requires_grad_()
        loss = 0.5 * ((rule.inverse(net, before, k, fwd, v, c) - h_noisy) ** 2).sum(-1).mean(-1)
        gv, gc = torch.autograd.grad(loss.sum(), [v, c])
        lr = (rule.feedback_lr / (1 + (fwd**2).sum(-1).mean(-1))).view(-1, 1, 1)
        torch.testing.assert_close(state["feedback_weights"][k - 1], v.detach() - lr * gv)
        torch.testing.assert_close(state["feedback_biases"][k - 1], c.detach() - lr[:, 0] * gc)
