"""A tiny fitted model for tests of the registry, predict and the service: seconds, no zoo.

Synthetic recordings whose learning trajectories differ by label (how fast responses sharpen,
how sparse they get) so that the real ``RuleIdentifier`` has something to learn; the card's
catalogue entries are the real ones from ``training_zoo`` (tests may import it; the library
must not).
"""

from __future__ import annotations

import numpy as np

from rulefinder.recording import make_recording

RULES = ("backprop", "feedback_alignment", "hebbian")
OPTIMIZERS = ("sgd", "adam")


def synthetic_recording(rule_i: int, opt_i: int, seed: int, units: int = 24, sessions: int = 6, stimuli: int = 16, area_order=True):
    rng = np.random.default_rng(seed)
    t = np.linspace(0.0, 1.0, sessions)
    base = rng.normal(size=(stimuli, units))
    target = rng.normal(size=(stimuli, units))
    speed = (1.0, 3.0, 0.3)[rule_i] * (1.0, 2.0)[opt_i]
    mix = 1.0 - np.exp(-speed * t)
    x = (1 - mix)[:, None, None] * base + mix[:, None, None] * target
    x = np.maximum(x + 0.5 * rule_i * mix[:, None, None] * target**2, 0.0) + 0.05 * rng.normal(size=x.shape)
    areas = np.array(["a1"] * (units // 2) + ["a2"] * (units - units // 2))
    return make_recording(x, unit_area=areas, area_order=["a1", "a2"] if area_order else None)


def tiny_dataset(per_class: int = 6, seed: int = 0):
    recs, labels, groups = [], {"rule": [], "family": [], "optimizer": []}, []
    families = {"backprop": "backprop", "feedback_alignment": "feedback_alignment", "hebbian": "hebbian"}
    k = 0
    for ri, rule in enumerate(RULES):
        for oi, opt in enumerate(OPTIMIZERS):
            for j in range(per_class):
                recs.append(synthetic_recording(ri, oi, seed * 10_000 + k))
                labels["rule"].append(rule)
                labels["family"].append(families[rule])
                labels["optimizer"].append(opt)
                groups.append(j % 3)
                k += 1
    return recs, labels, np.asarray(groups)


def tiny_estimator():
    from rulefinder.classify.estimator import RuleIdentifier

    recs, labels, groups = tiny_dataset()
    return RuleIdentifier(classifier="logreg", calibration_folds=3, n_times=4).fit(recs, labels, groups)


def tiny_card(estimator, name: str = "tiny"):
    from rulefinder.classify.card import AccuracyCell, ModelCard, catalogue_entries

    from training_zoo.rules import catalogue

    known = set(estimator.classes_["rule"])
    cells = [
        AccuracyCell(units=u, sessions=s, noise=n, accuracy=round(0.3 + 0.1 * i + 0.05 * j + (0.1 if n == "none" else 0.0), 3),
                     confusable=[["backprop", "feedback_alignment"]] if u == 10 else [])
        for i, u in enumerate((10, 30, 100))
        for j, s in enumerate((3, 5, 10))
        for n in ("none", "moderate", "high")
    ]
    return ModelCard(
        name=name,
        estimator="rulefinder.classify.estimator.RuleIdentifier",
        catalogue=catalogue_entries([e for e in catalogue() if e["id"] in known]),
        labels={t: [str(c) for c in estimator.classes_[t]] for t in ("rule", "family", "optimizer")},
        n_networks=len(estimator.classes_["rule"]),
        expected_accuracy=cells,
        description="tiny synthetic test model",
    )
