"""Out-of-zoo recordings (benchmarks/out_of_zoo.py) and the training-range warning.

Fast tier: the benchmark's own numpy rules are what they claim (backprop's error signals equal
numerical gradients; every rule learns a small task), and ``training_range_warnings`` reads the
card. Slow tier: a reduced out-of-zoo set through the shipped model, asserting only what holds
whatever the model's accuracy (valid results, distributions, the warning where circumstances
are off the training range): the benchmark tracks the accuracy gap, this test does not gate it.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from rulefinder.classify.card import ModelCard, TrainingRanges, ZooInfo
from rulefinder.classify.predict import OUTSIDE_TRAINING, training_range_warnings
from rulefinder.recording import make_recording

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import out_of_zoo as ooz  # noqa: E402

DEFAULT_CARD = REPO / "rulefinder/classify/models/default/card.json"


def _card(recording: dict | None) -> ModelCard:
    card = ModelCard.model_validate_json(DEFAULT_CARD.read_text())
    spec = {"name": "t"} if recording is None else {"name": "t", "recording": recording}
    return card.model_copy(update={"zoo": ZooInfo(spec=spec)})


def _rec(sessions=5, stimuli=64, units=(20, 10)):
    rng = np.random.default_rng(0)
    areas = np.concatenate([[f"a{i}"] * n for i, n in enumerate(units)])
    return make_recording(rng.normal(size=(sessions, stimuli, areas.size)), unit_area=areas,
                          area_order=[f"a{i}" for i in range(len(units))])


def test_backprop_deltas_are_the_gradient():
    rng = np.random.default_rng(1)
    net = ooz.MLP([5, 7, 6, 3], "tanh", rng)
    rule = ooz.Rule("backprop", net, rng)
    x, y = rng.normal(size=(4, 5)), np.array([0, 2, 1, 2])
    deltas, post = rule.deltas(net, x, y)
    grad = post[0].T @ deltas[0]

    def loss() -> float:
        return float(ooz._softmax_xent(net.forward(x)[1][-1], y)[0].mean())

    eps, (i, j) = 1e-6, (2, 4)
    net.W[0][i, j] += eps
    up = loss()
    net.W[0][i, j] -= 2 * eps
    down = loss()
    net.W[0][i, j] += eps
    assert grad[i, j] == pytest.approx((up - down) / (2 * eps), rel=1e-4)


@pytest.mark.parametrize("rule", ooz.RULES)
def test_every_rule_learns(rule):
    cfg = replace(ooz.EXAMPLE_LIKE, rule=rule, task="digits", activation="tanh", lr=0.2,
                  steps=300 * ooz.RULE_STEPS.get(rule, 1), seed=3)
    if rule == "node_perturbation":
        cfg = replace(cfg, lr=0.05, widths=(24,))
    t = ooz.train(cfg)
    assert ooz.learned(t), (rule, t.accuracy[[0, -1]])
    rec = ooz.record(t)
    assert rec.sizes["stimulus"] == cfg.probes and rec.sizes["session"] == cfg.sessions
    assert "output" not in set(rec.coords["unit_area"].values)  # EXAMPLE_LIKE records hidden layers only


def test_checkpoints_strictly_increase():
    for spacing in ("geometric", "even"):
        for sessions in (5, 11, 21):
            steps = ooz.checkpoint_steps(40, sessions, spacing)
            assert steps[0] == 0 and len(steps) == sessions and np.all(np.diff(steps) > 0)


def test_training_range_warnings():
    card = _card({"probes": 64, "checkpoints": 21, "units_per_layer": 64})
    assert training_range_warnings(_rec(), card) == []
    (w,) = training_range_warnings(_rec(stimuli=24), card)
    assert w.startswith(OUTSIDE_TRAINING) and "24 stimuli" in w and "had 64" in w
    (w,) = training_range_warnings(_rec(sessions=25), card)
    assert "25 sessions" in w and "at most 21" in w
    (w,) = training_range_warnings(_rec(units=(70, 10)), card)
    assert "'a0' 70" in w and "at most 64" in w
    # A card that does not say how its zoo recorded: nothing to compare with.
    assert training_range_warnings(_rec(stimuli=24), _card(None)) == []


def test_training_range_warnings_read_the_card_ranges_first():
    ranges = TrainingRanges(stimuli=(16, 64), sessions=(3, 21), units_per_area=(10, 64), output_area=[False, True])
    card = _card({"probes": 64, "checkpoints": 21, "units_per_layer": 64}).model_copy(update={"training_ranges": ranges})
    assert training_range_warnings(_rec(stimuli=24), card) == []  # inside the range, though the zoo recorded 64
    (w,) = training_range_warnings(_rec(stimuli=8), card)
    assert "8 stimuli" in w and "had 16-64" in w
    (w,) = training_range_warnings(_rec(stimuli=80, sessions=25), card)[1:]
    assert "25 sessions" in w and "at most 21" in w
    # the ranges survive the card's JSON, and an old card without them keeps its bytes
    back = ModelCard.model_validate_json(card.to_json())
    assert back.training_ranges == ranges
    assert "training_ranges" not in _card(None).to_json()


@pytest.mark.slow
def test_out_of_zoo_reduced_set_through_the_shipped_model():
    configs = ooz.draw_configs(per_rule=2, seed=1)
    out = ooz.run_benchmark(configs)
    summary = out["all"]
    assert summary["n"] == len(configs) == 2 * len(ooz.RULES)
    for key in ("rule_accuracy", "family_accuracy", "optimizer_accuracy", "mean_p_true_rule", "rule_top3_accuracy"):
        assert 0.0 <= summary[key] <= 1.0
    assert sum(sum(c.values()) for c in summary["confusion"].values()) == len(configs)
    assert sum(summary["verdicts"].values()) == len(configs)
    # Every result valid and carrying the training-range warning exactly where the stimulus count
    # differs from the zoo's (64 probes in the default model's zoo spec).
    from rulefinder.classify.predict import predict_recordings, resolve_model

    model = resolve_model(None)
    recs = [ooz.record(ooz.train(c)) for c in configs]
    results = predict_recordings(recs, model=model)
    probes = model.card.zoo.spec["recording"]["probes"]
    for c, r in zip(configs, results):
        for table in (r.rule_probabilities, r.family_probabilities, r.optimizer_probabilities):
            assert sum(table.values()) == pytest.approx(1.0, abs=1e-6)
        assert r.top_rule in model.card.labels["rule"] and 0.0 <= r.unknown_score <= 1.0
        flagged = any(w.startswith(OUTSIDE_TRAINING) and "stimuli" in w for w in r.warnings)
        assert flagged == (c.probes != probes)
