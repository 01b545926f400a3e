"""Per-rule learning-rate windows (``hyperparameters.rule_lr``) and the zoo10k configs pinned
to the spec they were trained with (issue #7: networks that learn)."""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import pytest

from pipelines.config import load_config
from training_zoo.spec import SpecError, expand_spec, load_spec

BASE = {"name": "t", "rules": ["backprop", "feedback_alignment"], "optimizers": ["sgd", "adam"],
        "variants": "default", "networks_per_shard": 6,
        "hyperparameters": {"lr": {"sgd": [0.01, 1.0], "adam": [0.0001, 0.01]}, "epochs": [1, 2]}}


def _with_windows(windows, **extra):
    return dict(BASE, hyperparameters=dict(BASE["hyperparameters"], rule_lr=windows), **extra)


def test_a_rule_window_moves_that_rules_draws_to_the_same_quantile_of_its_window():
    plain = {(s.rule, s.optimizer): s for s in expand_spec(BASE)}
    moved = {(s.rule, s.optimizer): s for s in expand_spec(_with_windows(
        {"feedback_alignment": {"sgd": [0.05, 0.5]}}))}
    # the other rule, and the rule's other optimizer, are untouched
    assert moved[("backprop", "sgd")].to_dict() == plain[("backprop", "sgd")].to_dict()
    assert moved[("feedback_alignment", "adam")].to_dict() == plain[("feedback_alignment", "adam")].to_dict()
    a, b = plain[("feedback_alignment", "sgd")], moved[("feedback_alignment", "sgd")]
    q_cell = (np.log10(a.lrs) - math.log10(0.01)) / 2.0  # quantile in the cell's two decades
    q_rule = (np.log10(b.lrs) - math.log10(0.05)) / 1.0  # quantile in the rule's one decade
    np.testing.assert_allclose(q_rule, q_cell, atol=1e-12)
    assert all(0.05 <= v <= 0.5 for v in b.lrs)
    assert {k: v for k, v in b.to_dict().items() if k != "lrs"} == {k: v for k, v in a.to_dict().items() if k != "lrs"}


def test_the_default_spec_draws_every_windowed_rule_inside_its_window():
    spec = load_spec("default")
    windows = spec["hyperparameters"]["rule_lr"]
    assert "backprop" in windows  # the yardstick is placed too
    task_scale = spec["hyperparameters"].get("task_lr_scale", {})
    for s in expand_spec(spec):
        w = windows.get(s.rule, {}).get(s.optimizer)
        lo, hi = w if w else spec["hyperparameters"]["lr"][s.optimizer]
        f = task_scale.get(s.task, {}).get(s.optimizer, 1.0)
        assert all(lo * f * (1 - 1e-9) <= v <= hi * f * (1 + 1e-9) for v in s.lrs), (s.shard_id, lo, hi, f)


def test_a_task_scale_moves_every_rules_draws_of_that_task_alike():
    spec = dict(BASE, tasks=["digits", "mnist1d"])
    plain = {s.shard_id: s for s in expand_spec(_with_windows({"feedback_alignment": {"sgd": [0.05, 0.5]}}, tasks=spec["tasks"]))}
    moved = {s.shard_id: s for s in expand_spec(dict(spec, hyperparameters=dict(
        BASE["hyperparameters"], rule_lr={"feedback_alignment": {"sgd": [0.05, 0.5]}},
        task_lr_scale={"mnist1d": {"sgd": 2}, "digits": 0.5})))}
    assert plain.keys() == moved.keys()
    for k, s in moved.items():
        f = 2.0 if (s.task, s.optimizer) == ("mnist1d", "sgd") else 0.5 if s.task == "digits" else 1.0
        np.testing.assert_allclose(s.lrs, np.asarray(plain[k].lrs) * f, rtol=1e-12)
        assert {a: b for a, b in s.to_dict().items() if a != "lrs"} == {a: b for a, b in plain[k].to_dict().items() if a != "lrs"}


@pytest.mark.parametrize("scale, match", [
    ({"mnist_1d": 2}, "hyperparameters.task_lr_scale: 'mnist_1d' is not a task"),
    ({"mnist1d": {"rmsprop": 2}}, "hyperparameters.task_lr_scale.mnist1d: unknown value 'rmsprop'"),
    ({"mnist1d": {"sgd": 0}}, r"hyperparameters.task_lr_scale.mnist1d.sgd: expected a positive number, found 0"),
    ({"mnist1d": "2"}, r"hyperparameters.task_lr_scale.mnist1d.sgd: expected a positive number, found '2'"),
    ([2], "hyperparameters.task_lr_scale: expected a mapping task"),
])
def test_malformed_task_scales_are_spec_errors_naming_the_field(scale, match):
    spec = dict(BASE, tasks=["digits", "mnist1d"], hyperparameters=dict(BASE["hyperparameters"], task_lr_scale=scale))
    with pytest.raises(SpecError, match=match):
        expand_spec(spec)


@pytest.mark.parametrize("windows, match", [
    ({"no_such_rule": {"sgd": [0.1, 1]}}, "hyperparameters.rule_lr: unknown rule 'no_such_rule'"),
    ({"backprop": [0.1, 1]}, r"hyperparameters.rule_lr.backprop: expected a mapping optimizer"),
    ({"backprop": {"rmsprop": [0.1, 1]}}, "hyperparameters.rule_lr.backprop: unknown value 'rmsprop'"),
    ({"backprop": {"sgd": [1, 0.1]}}, r"hyperparameters.rule_lr.backprop.sgd: expected \[low, high\].*found \[1, 0.1\]"),
    ({"backprop": {"sgd": [0, 0.1]}}, r"hyperparameters.rule_lr.backprop.sgd: expected \[low, high\], positive"),
    ({"backprop": {"sgd": [0.1]}}, r"hyperparameters.rule_lr.backprop.sgd: expected \[low, high\]"),
    ([1, 2], "hyperparameters.rule_lr: expected a mapping rule"),
])
def test_malformed_rule_windows_are_spec_errors_naming_the_field(windows, match):
    with pytest.raises(SpecError, match=match):
        expand_spec(_with_windows(windows))


def test_a_window_and_a_scale_for_the_same_rule_and_optimizer_is_an_error():
    with pytest.raises(SpecError, match="rule_lr.backprop.sgd: rule_lr_scale also sets"):
        expand_spec(_with_windows({"backprop": {"sgd": [0.1, 1]}}, rule_lr_scale={"backprop": {"sgd": 2}}))
    with pytest.raises(SpecError, match="rule_lr.backprop.adam: rule_lr_scale also sets"):
        expand_spec(_with_windows({"backprop": {"adam": [0.001, 0.01]}}, rule_lr_scale={"backprop": 2}))
    # a scale for another optimizer is fine
    expand_spec(_with_windows({"backprop": {"sgd": [0.1, 1]}}, rule_lr_scale={"backprop": {"adam": 2}}))


def _digest(shards, floats: bool) -> str:
    def norm(v):
        if isinstance(v, float):
            return float(f"{v:.10g}")  # immune to last-bit differences between maths libraries
        if isinstance(v, list):
            return [norm(x) for x in v]
        if isinstance(v, dict):
            return {k: norm(x) for k, x in v.items()}
        return v
    doc = [norm(s.to_dict()) for s in shards] if floats else [s.shard_id for s in shards]
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


#: The zoo10k and zoo15k stores (/work/runs/zoo10k.zarr, /work/runs/zoo15k.zarr) were trained
#: with these expansions; a change to the default spec must not move them, or the stores stop
#: being resumable with the same shards (their configs pin the hyperparameters they were trained with).
FROZEN = {"zoo10k": ("cbdbb509aea60cd1", "37b11fa5401e7c84"),
          "zoo10k-seed1": ("22bbb3a2177598c2", "b213a23bee2360e4"),
          "zoo15k": ("7c0fd1e4132d702d", "745e9896da0c4c46")}


@pytest.mark.parametrize("name", sorted(FROZEN))
def test_the_pinned_zoo_configs_expand_to_the_shards_their_store_holds(name):
    shards = expand_spec(load_config(f"pipelines/configs/{name}.yaml").zoo_spec())
    assert (_digest(shards, False), _digest(shards, True)) == FROZEN[name]


def test_epochs_per_task_with_a_default_for_the_others():
    spec = dict(BASE, tasks=["digits", "mnist1d"], hyperparameters=dict(
        BASE["hyperparameters"], epochs={"digits": [10, 20], "default": [3, 4], "mnist5k_14": [1, 2]}))
    # mnist5k_14 is not trained here: allowed, so a config may narrow an inherited spec's tasks
    for s in expand_spec(spec):
        lo, hi = (10, 20) if s.task == "digits" else (3, 4)
        assert lo <= s.epochs <= hi, (s.shard_id, s.epochs)


@pytest.mark.parametrize("epochs, match", [
    ({"digitz": [1, 2], "default": [1, 2]}, "hyperparameters.epochs: 'digitz' is neither a task nor 'default'"),
    ({"digits": [1, 2]}, "hyperparameters.epochs: no range for task 'mnist1d' and no 'default'"),
    ({"digits": [3, 1], "default": [1, 2]}, r"hyperparameters.epochs.digits: expected \[low, high\]"),
])
def test_malformed_epochs_per_task_are_spec_errors_naming_the_field(epochs, match):
    spec = dict(BASE, tasks=["digits", "mnist1d"], hyperparameters=dict(BASE["hyperparameters"], epochs=epochs))
    with pytest.raises(SpecError, match=match):
        expand_spec(spec)


def test_the_windows_analysis_finds_where_a_store_learns_and_flags_an_edge():
    """benchmarks/learned_fraction.py --windows: the one-decade window with most learners."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks.learned_fraction import analyse_windows

    rng = np.random.default_rng(0)
    lrs = 10 ** rng.uniform(-4, 0, 800)  # four decades
    eps = rng.uniform(1, 3, 800)
    rows = [dict(rule="a", optimizer="sgd", lr=float(v), epochs=float(e), learned=bool(0.003 <= v <= 0.03))
            for v, e in zip(lrs, eps)]
    rows += [dict(rule="b", optimizer="sgd", lr=float(v), epochs=float(e), learned=bool(v >= 0.2))
             for v, e in zip(lrs, eps)]
    w = analyse_windows(rows)
    lo, hi = w["a"]["sgd"]["window"]
    assert abs(math.log10(lo) - math.log10(0.003)) < 0.3 and hi == pytest.approx(10 * lo)
    assert w["a"]["sgd"]["observed"] > 0.8 and w["a"]["sgd"]["edge"] is None
    assert w["b"]["sgd"]["edge"] == "top"  # the optimum may lie above what the store drew


def test_zoo15k_is_zoo10k_cells_at_its_pinned_windows_and_lengths():
    """pipelines/configs/zoo15k.yaml (issue #12's zoo at issue #7's settings of e307786, pinned in
    the config): the same cells and size as zoo10k, shard ids apart from it, every learning rate
    inside its rule's window and every run as long as the pinned epochs say."""
    spec15 = load_config("pipelines/configs/zoo15k.yaml").zoo_spec()
    new = expand_spec(spec15)
    old = expand_spec(load_config("pipelines/configs/zoo10k.yaml").zoo_spec())
    # shapes, and which variant meets which cell, are drawn per seed
    cell = lambda s: (s.rule, s.optimizer, s.task, s.arch["family"])  # noqa: E731
    assert sorted(map(cell, new)) == sorted(map(cell, old))
    assert {(s.rule, s.variant) for s in new} == {(s.rule, s.variant) for s in old}
    assert sum(len(s.lrs) for s in new) == sum(len(s.lrs) for s in old) == 15_552
    assert all(s.shard_id.endswith(".s2") for s in new)
    assert not {s.shard_id for s in new} & {s.shard_id for s in old}
    hp = spec15["hyperparameters"]
    for s in new:
        lo, hi = hp.get("rule_lr", {}).get(s.rule, {}).get(s.optimizer, hp["lr"][s.optimizer])
        assert all(lo * (1 - 1e-9) <= lr <= hi * (1 + 1e-9) for lr in s.lrs), (s.shard_id, s.lrs, lo, hi)
    digits = [s.epochs for s in new if s.task == "digits" and s.rule != "node_perturbation"]
    assert min(digits) >= 10 and max(digits) <= 20


def test_the_store_analysis_reads_learning_rate_thirds_per_task():
    """benchmarks/learned_fraction.py --store: a task whose window a task_lr_scale moved is read
    in its own range, not the range of all tasks pooled."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks.learned_fraction import analyse_store

    rng = np.random.default_rng(1)
    rows = []
    for task, lo in (("digits", -2.0), ("mnist1d", -1.0)):  # mnist1d's window a decade higher
        for u in rng.uniform(0, 1, 300):
            rows.append(dict(rule="a", variant="default", arch_family="mlp", task=task, optimizer="sgd",
                             epochs=1.0, lr=float(10 ** (lo + u)), learned=bool(u < 1 / 3)))
    thirds = analyse_store(rows)["a"]["lr_thirds"]["sgd"]
    assert thirds[0] == pytest.approx(1.0, abs=0.02) and thirds[1] < 0.05 and thirds[2] == 0.0
