"""Population trainer, optimizers, recorder and zoo-spec expansion."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rulefinder.recording import validate_recording
from training_zoo.architectures import build_network, reinitialise
from training_zoo.optimizers import make_optimizer
from training_zoo.recorder import Recorder
from training_zoo.spec import SpecError, expand_spec, run_shard
from training_zoo.tasks import TASKS, load_task, make_mnist1d
from training_zoo.trainer import checkpoint_steps, train_population


@pytest.fixture(scope="module")
def digits():
    return load_task("digits")


def _net(task, m=4, arch=None, seeds=None):
    arch = arch or {"family": "mlp", "depth": 2, "width": 16}
    net = build_network(arch, task.input_shape, task.n_classes, m)
    reinitialise(net, ["default"] * m, [1.0] * m, seeds or list(range(m)))
    return net


@pytest.mark.parametrize("name", TASKS)
def test_tasks_have_disjoint_probe_set_and_shapes(name):
    t = load_task(name)
    assert t.x_train.dtype == torch.float32 and t.y_train.dtype == torch.int64
    assert t.x_probe.shape == (64, t.n_features)
    assert int(np.prod(t.input_shape)) == t.n_features
    # probes are held-out test items, spread over the classes
    assert len(set(t.y_probe.tolist())) == t.n_classes
    train_rows = {tuple(r) for r in t.x_train.numpy().round(5).tolist()}
    assert not any(tuple(r) in train_rows for r in t.x_probe.numpy().round(5).tolist())


def test_mnist1d_is_generated_deterministically():
    a, ya = make_mnist1d(50, seed=3)
    b, yb = make_mnist1d(50, seed=3)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ya, yb)
    assert a.shape == (50, 40) and set(ya.tolist()) <= set(range(10))


def test_input_scale_multiplies_inputs(digits):
    t2 = load_task("digits", input_scale=2.0)
    torch.testing.assert_close(t2.x_train, 2 * digits.x_train)


@pytest.mark.parametrize("name", ["sgd", "momentum", "adam"])
def test_optimizers_match_torch_optim_per_network(name):
    g = torch.Generator().manual_seed(0)
    p = torch.randn(3, 4, 5, generator=g)
    lrs = torch.tensor([0.1, 0.01, 0.001])
    opt = make_optimizer(name, [p], lrs)
    refs = [p[i].clone().requires_grad_() for i in range(3)]
    cls = {"sgd": torch.optim.SGD, "momentum": torch.optim.SGD, "adam": torch.optim.Adam}[name]
    kw = {"momentum": 0.9} if name == "momentum" else {}
    topts = [cls([refs[i]], lr=float(lrs[i]), **kw) for i in range(3)]
    for _ in range(4):
        d = torch.randn(3, 4, 5, generator=g)
        opt.step([d])
        for i in range(3):
            refs[i].grad = d[i].clone()
            topts[i].step()
    for i in range(3):
        torch.testing.assert_close(p[i], refs[i].detach(), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("arch", [{"family": "mlp", "depth": 2, "width": 16},
                                  {"family": "cnn", "channels": [4, 8]}])
def test_training_is_deterministic_for_a_seed(digits, arch):
    runs = []
    for _ in range(2):
        net = _net(digits, arch=arch)
        res = train_population("feedback_alignment", net, digits, "adam", lr=3e-3, epochs=0.5, seed=7)
        runs.append((net.state_dict(), res["test_accuracy"]))
    for k in runs[0][0]:
        assert torch.equal(runs[0][0][k], runs[1][0][k])
    assert torch.equal(runs[0][1], runs[1][1])


def test_a_network_does_not_depend_on_its_population(digits):
    """Network i with seed s trains the same alone or among others (per-network init seeds)."""
    big = _net(digits, m=3, seeds=[11, 12, 13])
    train_population("backprop", big, digits, "sgd", lr=torch.tensor([0.05, 0.1, 0.2]), epochs=0.3, seed=1)
    alone = _net(digits, m=1, seeds=[12])
    train_population("backprop", alone, digits, "sgd", lr=0.1, epochs=0.3, seed=1)
    for w_big, w_one in zip(big.weights, alone.weights):
        torch.testing.assert_close(w_big[1], w_one[0], atol=1e-5, rtol=1e-4)


def test_population_learns(digits):
    net = _net(digits, m=2)
    res = train_population("backprop", net, digits, "sgd", lr=0.1, epochs=3, seed=0)
    assert (res["test_accuracy"] > 0.85).all()
    assert not res["diverged"].any()


def test_diverging_networks_are_detected_and_never_recorded_as_garbage(digits, caplog):
    net = _net(digits, m=3)
    probes = digits.x_probe
    rec = Recorder(net, probes, units_per_layer=8)
    steps = checkpoint_steps(40, 5)
    with caplog.at_level("WARNING"):
        res = train_population("backprop", net, digits, "sgd", lr=torch.tensor([0.05, 50.0, 0.05]),
                               epochs=2, seed=0, max_steps=40, checkpoints=steps, recorder=rec)
    assert res["diverged"].tolist() == [False, True, False]
    assert int(res["diverged_step"][1]) >= 0
    assert "diverged" in caplog.text
    records = rec.records([f"n{i}" for i in range(3)], [
        {"rule": "backprop", "family": "backprop", "optimizer": "sgd", "architecture": "mlp",
         "arch_family": "mlp", "task": "digits", "seed": i, "hyperparameters": {}} for i in range(3)
    ], res["diverged"], res["diverged_step"])
    assert [r.diverged for r in records] == [False, True, False]
    for r in records:
        assert np.isfinite(r.recording.values).all()
        assert np.isfinite(r.weight_stats.values).all()
    assert all(p.isfinite().all() for p in net.parameters())


@pytest.mark.parametrize("spacing", ["even", "geometric"])
def test_checkpoint_steps(spacing):
    s = checkpoint_steps(1000, 21, spacing)
    assert len(s) == 21 and s[0] == 0 and s[-1] == 1000
    assert all(b > a for a, b in zip(s, s[1:]))
    if spacing == "geometric":
        assert s[2] - s[1] < s[-1] - s[-2]
    assert checkpoint_steps(20, 21, spacing) == list(range(21))
    with pytest.raises(ValueError):
        checkpoint_steps(10, 21, spacing)


@pytest.mark.parametrize("arch", [{"family": "mlp", "depth": 2, "width": 16},
                                  {"family": "resmlp", "depth": 2, "width": 16},
                                  {"family": "cnn", "channels": [4, 8]}])
def test_run_shard_records_valid_recordings(arch):
    shards = expand_spec({
        "name": "t", "rules": ["kolen_pollack"], "optimizers": ["momentum"], "tasks": ["digits"],
        "architectures": [arch], "networks_per_shard": 3,
        "hyperparameters": {"lr": {"momentum": [0.01, 0.05]}, "epochs": [0.3, 0.3]},
        "recording": {"checkpoints": 5, "units_per_layer": 6, "probes": 10},
    })
    assert len(shards) == 1
    records = run_shard(shards[0])
    assert len(records) == 3
    n_layers = 3
    for r in records:
        validate_recording(r.recording)
        assert r.recording.dims == ("session", "stimulus", "unit")
        assert r.recording.shape == (5, 10, 6 * n_layers)
        assert r.recording.attrs["area_order"] == ["layer1", "layer2", "output"]
        assert list(np.unique(r.recording.coords["unit_area"].values)) == ["layer1", "layer2", "output"]
        steps = r.recording.coords["session_time"].values
        assert steps[0] == 0 and (np.diff(steps) > 0).all()
        perf = r.recording.coords["performance"].values
        assert ((perf >= 0) & (perf <= 1)).all()
        assert r.weight_stats.sizes == {"checkpoint": 5, "layer": n_layers, "weight_stat": 5}
        assert (r.activity_change.values[0] == 0).all() and (r.activity_change.values[1:] > 0).all()
        assert r.train_loss.sizes == {"checkpoint": 5}
        assert r.metadata["rule"] == "kolen_pollack" and r.metadata["optimizer"] == "momentum"
        assert r.metadata["arch_family"] == arch["family"]
        assert 0.01 <= r.metadata["hyperparameters"]["lr"] <= 0.05
    # the recorded units are a fixed subset: same units at every checkpoint, chosen per network
    assert len({r.network_id for r in records}) == 3


def test_recorded_units_are_the_same_units_at_every_checkpoint(digits):
    net = _net(digits, m=2, arch={"family": "mlp", "depth": 1, "width": 32})
    rec = Recorder(net, digits.x_probe, units_per_layer=5, seed=3)
    rec.record(0, net, torch.zeros(2), torch.zeros(2))
    _, post = net.forward(digits.x_probe)
    idx = rec.unit_index[0]
    for i in range(2):
        torch.testing.assert_close(torch.as_tensor(rec.responses[0][i, :, :5]), post[1][i][:, idx[i]])


def test_spec_expansion():
    shards = expand_spec("smoke")
    assert len(shards) == 8  # 2 rules x 2 optimizers x 1 task x 2 architectures
    assert len({s.shard_id for s in shards}) == len(shards)
    for s in shards:
        assert s.n_networks == 4
        lo, hi = {"sgd": (0.01, 1.0), "adam": (0.0003, 0.03)}[s.optimizer]
        assert all(lo <= lr <= hi for lr in s.lrs)
        assert len(set(s.seeds)) == s.n_networks
    assert [s.to_dict() for s in expand_spec("smoke")] == [s.to_dict() for s in shards]
    default = expand_spec("default")
    assert {s.optimizer for s in default} == {"sgd", "momentum", "adam"}
    assert {s.arch["family"] for s in default} == {"mlp", "resmlp", "cnn"}
    lrs = [lr for s in default if s.optimizer == "sgd" for lr in s.lrs]
    assert max(lrs) / min(lrs) > 50  # two orders of magnitude
    assert {s.spacing for s in default} == {"even", "geometric"}


def test_spec_errors_are_clear():
    with pytest.raises(SpecError, match="unknown rule 'no_such_rule'"):
        expand_spec({"rules": ["no_such_rule"]})
    with pytest.raises(SpecError, match="optimizers"):
        expand_spec({"rules": ["backprop"], "optimizers": ["rmsprop"]})
    with pytest.raises(SpecError, match="tasks"):
        expand_spec({"rules": ["backprop"], "tasks": ["imagenet"]})
    with pytest.raises(SpecError, match="built-in"):
        expand_spec("no_such_spec")


def test_unsupported_architectures_are_skipped_not_errors():
    from training_zoo.rules import all_rules

    cnn_less = [r for r, c in all_rules().items() if "cnn" not in c.supports]
    if not cnn_less:
        pytest.skip("every registered rule supports cnn")
    shards = expand_spec({"rules": [cnn_less[0]], "architectures": [{"family": "cnn"}, {"family": "mlp"}]})
    assert [s.arch["family"] for s in shards] == ["mlp"]


def test_records_are_identical_to_recordings_built_network_by_network(digits):
    # Recorder.records builds every network's objects as views of population-wide arrays; they
    # must be exactly what make_recording and per-network DataArrays would have built.
    import xarray as xr

    from rulefinder.recording import make_recording
    from training_zoo.recorder import WEIGHT_STATS

    net = _net(digits, m=3, arch={"family": "mlp", "depth": 2, "width": 12})
    rec = Recorder(net, digits.x_probe, units_per_layer=5, seed=1)
    steps = checkpoint_steps(12, 4)
    res = train_population("hebbian", net, digits, "sgd", lr=torch.tensor([0.01, 1e4, 0.02]), epochs=1,
                           seed=0, max_steps=12, checkpoints=steps, recorder=rec)
    ids = [f"s/{i}" for i in range(3)]
    meta = [{"rule": "hebbian", "family": "hebbian", "optimizer": "sgd", "architecture": "mlp",
             "arch_family": "mlp", "task": "digits", "seed": i, "hyperparameters": {}} for i in range(3)]
    records = rec.records(ids, meta, res["diverged"], res["diverged_step"])
    areas, labels = rec.unit_labels()
    acc = np.clip(np.stack(rec.test_accuracy, 1), 0.0, 1.0)
    ckpt = {"checkpoint": np.arange(len(steps)), "step": ("checkpoint", np.asarray(steps, float))}
    for i, r in enumerate(records):
        want = make_recording(
            np.stack(rec.responses, 1)[i], session_time=np.asarray(steps, float), unit_area=areas,
            stimulus=np.arange(len(digits.x_probe)), performance=acc[i], area_order=rec.names, unit=labels,
            source=ids[i], attrs={"network_id": ids[i], "output_units": "logits"},
        )
        xr.testing.assert_identical(r.recording, want)
        assert r.recording.dtype == want.dtype and r.recording.attrs == want.attrs
        xr.testing.assert_identical(r.weight_stats, xr.DataArray(
            np.stack(rec.weight_stats, 1)[i], dims=("checkpoint", "layer", "weight_stat"),
            coords={**ckpt, "layer": rec.names, "weight_stat": list(WEIGHT_STATS)}))
        xr.testing.assert_identical(r.activity_change, xr.DataArray(
            np.stack(rec.activity_change, 1)[i], dims=("checkpoint", "layer"), coords={**ckpt, "layer": rec.names}))
        xr.testing.assert_identical(r.train_loss, xr.DataArray(
            np.stack(rec.train_loss, 1)[i], dims=("checkpoint",), coords=ckpt))
        assert r.diverged == bool(res["diverged"][i])


def test_checkpoint_eval_subset_changes_no_training_and_the_last_checkpoint_uses_the_full_test_set(digits):
    runs = []
    for eval_examples in (None, 100):
        net = _net(digits, m=3)
        rec = Recorder(net, digits.x_probe, units_per_layer=4)
        res = train_population("backprop", net, digits, "sgd", lr=0.1, epochs=1, seed=0, max_steps=30,
                               checkpoints=checkpoint_steps(30, 4), recorder=rec, eval_examples=eval_examples)
        runs.append((net, rec, res))
    (full_net, full_rec, full_res), (sub_net, sub_rec, sub_res) = runs
    for a, b in zip(full_net.parameters(), sub_net.parameters()):
        assert torch.equal(a, b)
    assert torch.equal(full_res["test_accuracy"], sub_res["test_accuracy"])
    np.testing.assert_array_equal(full_rec.test_accuracy[-1], sub_rec.test_accuracy[-1])
    np.testing.assert_array_equal(np.stack(full_rec.train_loss), np.stack(sub_rec.train_loss))
    np.testing.assert_array_equal(full_rec.responses[1], sub_rec.responses[1])
    for acc in sub_rec.test_accuracy[:-1]:  # measured on the first 100 test examples
        np.testing.assert_allclose(acc * 100, np.round(acc * 100), atol=1e-4)
    assert not np.array_equal(np.stack(full_rec.test_accuracy[:-1]), np.stack(sub_rec.test_accuracy[:-1]))


def test_evaluate_relaxes_once_per_chunk_for_a_predict_built_on_forward(digits, monkeypatch):
    from training_zoo.rules.equilibrium_propagation import EquilibriumPropagation
    from training_zoo.trainer import evaluate

    rule = EquilibriumPropagation()
    net = _net(digits, m=2)
    x, y = digits.x_test[:50], digits.y_test[:50]
    want = (rule.predict(net, None, x).argmax(-1) == y).double().mean(1).float()
    calls = []
    original = EquilibriumPropagation.forward
    monkeypatch.setattr(EquilibriumPropagation, "forward",
                        lambda self, *a: calls.append(1) or original(self, *a))
    acc, loss = evaluate(net, x, y, chunk=30, rule=rule, state=None)
    assert len(calls) == 2  # two chunks, one relaxation each (predict reuses it)
    assert torch.equal(acc, want) and torch.isfinite(loss).all()
    assert "forward" not in vars(rule)
    acc_off, loss_off = evaluate(net, x, y, chunk=30, rule=rule, state=None, accuracy=False)
    assert torch.isnan(acc_off).all() and torch.equal(loss_off, loss)
