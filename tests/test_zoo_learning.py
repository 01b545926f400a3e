"""Every registered rule really assigns credit (fast version of docs/rules.md's check).

Yardstick: the same architecture with frozen random hidden layers and only the readout
trained (``ReadoutOnly``). Gradient-approximating rules must gain at least half of backprop's
gain over that baseline; node perturbation, Hebbian and Forward-Forward must beat it clearly
(``training_zoo.baselines``). Each rule gets the same small learning-rate sweep per optimizer
(one population each) and is judged by its best network, as are the baseline and backprop.
A rule below its bar is a bug to find, not a bar to lower.
"""

from __future__ import annotations

import pytest
import torch

from training_zoo.baselines import ReadoutOnly, bar_kind, best_accuracy, passes_bar
from training_zoo.rules import all_rules, get_rule
from training_zoo.tasks import load_task

LRS = {"sgd": [0.01, 0.03, 0.1, 0.3, 1.0], "adam": [3e-4, 1e-3, 3e-3, 1e-2, 3e-2]}
EPOCHS = 5
# Canonical node perturbation (one noisy pass through every layer at once) has many times the
# variance of a layer-wise multi-sample estimate: it needs about four times the steps (0.64 after
# 5 epochs, 0.88 after 10, 0.90 after 20 on this bar; its margin after 10 is within seed noise).
RULE_EPOCHS = {"node_perturbation": 20}
# narrow enough that random hidden features are clearly worse than learned ones on digits
ARCH = {"depth": 2, "width": 32, "activation": "relu"}


def _arch(rule_cls) -> dict:
    family = "mlp" if "mlp" in rule_cls.supports else rule_cls.supports[0]
    return {"family": family, **ARCH}


@pytest.fixture(scope="module")
def task():
    # one thread: small ops on a shared 2-core machine stall on a second OpenMP thread
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield load_task("digits")
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def yardsticks(task):
    arch = {"family": "mlp", **ARCH}
    base = best_accuracy(ReadoutOnly(), arch, task, m_lrs=LRS, epochs=EPOCHS)["accuracy"]
    bp = best_accuracy(get_rule("backprop")(), arch, task, m_lrs=LRS, epochs=EPOCHS)["accuracy"]
    return base, bp


def test_backprop_beats_the_random_feature_baseline(yardsticks):
    base, bp = yardsticks
    assert bp > base + 0.05, (base, bp)


@pytest.mark.parametrize("rule_id", sorted(all_rules()))
def test_rule_assigns_credit(rule_id, task, yardsticks):
    base, bp = yardsticks
    cls = get_rule(rule_id)
    best = best_accuracy(cls(), _arch(cls), task, m_lrs=LRS, epochs=RULE_EPOCHS.get(rule_id, EPOCHS))
    kind = bar_kind(rule_id, cls.family)
    assert passes_bar(kind, best["accuracy"], base, bp), (
        f"{rule_id}: accuracy {best['accuracy']:.3f} (best at {best['optimizer']} lr={best['lr']}); "
        f"baseline {base:.3f}, backprop {bp:.3f}, bar {kind}"
    )


def test_validation_split_is_carved_from_the_training_data_only():
    """Rule constants are chosen on ``validation_split`` (benchmarks/rule_hyperparameters.py):
    its held-out part comes from the training split, never the test split."""
    from training_zoo.tasks import Task, validation_split

    g = torch.Generator().manual_seed(0)
    x = torch.arange(50, dtype=torch.float32).unsqueeze(1).repeat(1, 3)
    y = torch.arange(50) % 5
    test_x = -1.0 - torch.rand(10, 3, generator=g)
    task = Task("toy", x, y, test_x, torch.arange(10) % 5, test_x[:2], torch.arange(2), 5, (1, 1, 3))
    v = validation_split(task, fraction=0.2, seed=3)
    assert (len(v.y_train), len(v.y_test)) == (40, 10)
    ids = lambda t: set(t[:, 0].tolist())  # noqa: E731
    assert ids(v.x_train) | ids(v.x_test) == ids(x) and not ids(v.x_train) & ids(v.x_test)
    assert ids(v.x_probe) <= ids(v.x_test)
    assert torch.equal(v.y_test, y[v.x_test[:, 0].long()])
    assert torch.equal(validation_split(task, fraction=0.2, seed=3).x_test, v.x_test)
    with pytest.raises(ValueError, match="empty split"):
        validation_split(task, fraction=0.0)


def test_every_cell_of_the_default_spec_has_a_shipped_learning_bar():
    """The store's ``learned`` flag comes from training_zoo/learning_reference.json for every task,
    architecture family and optimizer of the default spec (no fallback to a chance baseline)."""
    from training_zoo.baselines import learned_threshold
    from training_zoo.spec import load_spec

    spec = load_spec("default")
    missing = [(t, a["family"], o) for t in spec["tasks"] for a in spec["architectures"]
               for o in spec["optimizers"] if learned_threshold(t, a["family"], o) is None]
    assert not missing, missing


def test_learned_fraction_of_a_store_per_rule_and_variant():
    """benchmarks/learned_fraction.py --store: fractions per rule, and per variant within it."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks.learned_fraction import analyse_store

    row = dict(task="digits", arch_family="mlp", optimizer="sgd", epochs=2.0, lr=0.1)
    rows = ([{**row, "rule": "a", "variant": "default", "learned": True}] * 3
            + [{**row, "rule": "a", "variant": "other", "learned": False}]
            + [{**row, "rule": "b", "variant": "default", "learned": False, "epochs": 4.0}])
    out = analyse_store(rows)
    assert out["a"]["fraction"] == 0.75 and out["a"]["n"] == 4
    assert out["a"]["variants"] == {"default": (1.0, 3), "other": (0.0, 1)}
    assert out["b"]["fraction"] == 0.0
