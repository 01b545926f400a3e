"""RuleIdentifier and the dataset step on a tiny zoo trained here (the smoke spec, ~30 s):
the interface other modules build on (shapes, the result fields, skops round trip),
invariances, grouped calibration, and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from rulefinder.classify import PredictionResult
from rulefinder.classify.dataset import LABEL_COLUMNS, label_dict, zoo_dataset
from rulefinder.classify.estimator import TARGETS, RuleIdentifier
from rulefinder.store import ZooStore
from rulefinder.vocabulary import VERDICTS
from training_zoo.local_run import run_zoo

DETAIL_KEYS = {
    "rule_probabilities",
    "family_probabilities",
    "optimizer_probabilities",
    "per_area",
    "unknown_score",
    "verdict",
    "confusable_with",
    "warnings",
}


@pytest.fixture(scope="module")
def tiny_zoo(tmp_path_factory):
    url = str(tmp_path_factory.mktemp("zoo") / "smoke.zarr")
    run_zoo("smoke", url, progress=False)
    return ZooStore.open(url)


@pytest.fixture(scope="module")
def data(tiny_zoo):
    return zoo_dataset(tiny_zoo)


@pytest.fixture(scope="module")
def fitted(data):
    recs, labels = data
    return RuleIdentifier(calibration_folds=3).fit(recs, label_dict(labels), groups=labels["shard"].values)


def test_dataset_labels_table(tiny_zoo):
    recs, labels = zoo_dataset(
        tiny_zoo,
        experiments=[{"seed": 1, "steps": [{"op": "keep_units", "n": 4, "per_area": True}]}],
        n_draws=2,
    )
    n_net = tiny_zoo.networks().sizes["network"]
    assert len(recs) == labels.sizes["sample"] == 3 * n_net
    for col in (*LABEL_COLUMNS, "learned", "virtual", "final_accuracy", "epochs", "batch_size", "input_scale"):
        assert col in labels
    assert set(labels["variant"].values.tolist()) == {"default"}  # old store: no variants
    plain = labels["virtual"].values == ""
    assert plain.sum() == n_net
    # virtual draws differ from each other and keep 4 units per area
    v = np.flatnonzero(~plain)
    assert recs[v[0]].sizes["unit"] == 4 * len(recs[v[0]].attrs["area_order"])
    assert labels["virtual"].values[v[0]] != labels["virtual"].values[v[1]]


def test_predict_proba_shapes_and_classes(fitted, data):
    recs, labels = data
    p = fitted.predict_proba(recs[:5])
    assert set(p) == set(TARGETS)
    for t in TARGETS:
        assert list(fitted.classes_[t]) == sorted(set(labels[t].values.tolist()))
        assert p[t].shape == (5, len(fitted.classes_[t]))
        np.testing.assert_allclose(p[t].sum(axis=1), 1.0, atol=1e-9)
    assert 0 < fitted.temperature_["rule"] < 25


def test_predict_details_are_prediction_results(fitted, data):
    recs, _ = data
    details = fitted.predict_details(recs[:3])
    assert len(details) == 3
    for d in details:
        assert set(d) == DETAIL_KEYS
        assert d["verdict"] in VERDICTS
        assert len(d["per_area"]) == len(recs[0].attrs["area_order"])
        result = PredictionResult(
            **d,
            top_rule=max(d["rule_probabilities"], key=d["rule_probabilities"].get),
            top_family=max(d["family_probabilities"], key=d["family_probabilities"].get),
            top_optimizer=max(d["optimizer_probabilities"], key=d["optimizer_probabilities"].get),
            model={"name": "test", "sha256": "0" * 64},
        )
        assert result.per_area[-1].depth == 1.0
    group = fitted.predict_details(recs[:3], group=True)
    assert len(group) == 1 and set(group[0]) == DETAIL_KEYS
    assert abs(sum(group[0]["rule_probabilities"].values()) - 1) < 1e-9


def _permuted_and_scaled(rec: xr.DataArray, seed: int) -> xr.DataArray:
    rng = np.random.default_rng(seed)
    out = rec.isel(unit=rng.permutation(rec.sizes["unit"]), stimulus=rng.permutation(rec.sizes["stimulus"]))
    return out * 7.5


def test_invariant_to_unit_and_stimulus_order_and_scale(fitted, data):
    recs, _ = data
    moved = [_permuted_and_scaled(r, i) for i, r in enumerate(recs[:4])]
    a, b = fitted.predict_proba(recs[:4]), fitted.predict_proba(moved)
    for t in TARGETS:
        np.testing.assert_allclose(a[t], b[t], atol=1e-6)


def test_unknown_score_flags_pure_noise(fitted, data):
    recs, _ = data
    rng = np.random.default_rng(0)
    noise = recs[0].copy(data=rng.standard_normal(recs[0].shape))
    known = np.mean([d["unknown_score"] for d in fitted.predict_details(recs[:8])])
    assert fitted.predict_details(noise)[0]["unknown_score"] > known


def test_skops_round_trip_with_trusted_types(fitted, data):
    from skops.io import dumps, get_untrusted_types, loads

    blob = dumps(fitted)
    assert set(get_untrusted_types(data=blob)) <= set(RuleIdentifier.trusted_types())
    again = loads(blob, trusted=RuleIdentifier.trusted_types())
    recs, _ = data
    np.testing.assert_allclose(again.predict_proba(recs[:3])["rule"], fitted.predict_proba(recs[:3])["rule"])


def test_area_votes_and_trees(data):
    recs, labels = data
    y = label_dict(labels)
    votes = RuleIdentifier(aggregate="mean", calibration_folds=0, feature_set="stats").fit(recs, y)
    trees = RuleIdentifier(classifier="hgb", max_iter=3, calibration_folds=0, feature_set="stats").fit(recs, y)
    for model in (votes, trees):
        d = model.predict_details(recs[:2])
        assert len(d) == 2 and abs(sum(d[0]["rule_probabilities"].values()) - 1) < 1e-9
    with pytest.raises(ValueError, match="aggregate is 'max'"):
        RuleIdentifier(aggregate="max").fit(recs[:4], {t: labels[t].values[:4] for t in TARGETS})


def test_bad_labels_are_named(data):
    recs, labels = data
    with pytest.raises(ValueError, match="lacks \\['optimizer'\\]"):
        RuleIdentifier().fit(recs, {"rule": labels["rule"].values, "family": labels["family"].values})
    with pytest.raises(ValueError, match="labels\\['rule'\\] has 3 values"):
        RuleIdentifier().fit(recs, {t: labels[t].values[:3] for t in TARGETS})
    with pytest.raises(RuntimeError, match="not fitted"):
        RuleIdentifier().predict_proba(recs[:1])


# --- evaluation -----------------------------------------------------------------------------

FAST = {"calibration_folds": 2}


def test_evaluate_writes_metrics_report_and_figures(tiny_zoo, tmp_path):
    import json

    from rulefinder.classify.evaluate import evaluate

    metrics = evaluate(
        tiny_zoo,
        tmp_path,
        splits=("lofo_arch", "performance_matched", "controls", "grid"),
        params=FAST,
        grid_networks=4,
        augment=0,
        control_networks=2,
        grid=((4, "all"), (3,), ("none", "high")),
        progress=False,
    )
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved == metrics
    for key in ("n_rules", "n_networks", "rule_bacc_lofo_arch", "family_bacc_lofo_arch", "optimizer_bacc_lofo_arch",
                "rule_top3_lofo_arch", "ece", "rule_bacc_performance_matched", "controls_unknown_rate"):
        assert key in metrics
    assert metrics["n_rules"] == 2 and metrics["n_networks"] == tiny_zoo.networks().sizes["network"]
    assert 0 <= metrics["rule_bacc_lofo_arch"] <= 1 and 0 <= metrics["ece"] <= 1
    assert metrics["rule_top3_lofo_arch"] == 1.0  # two rules: the truth is always in the top 3
    assert metrics["controls_n"] > 0
    assert len(metrics["grid"]) == 4 and {c["units"] for c in metrics["grid"]} == {4, "all"}
    assert metrics["rule_bacc_lovo_variant"] is None if "rule_bacc_lovo_variant" in metrics else True
    for png in ("confusion_rule_lofo_arch.png", "reliability.png", "accuracy_grid.png"):
        assert (tmp_path / png).stat().st_size > 1000
    html = (tmp_path / "report.html").read_text()
    assert "rule_bacc_lofo_arch" in html and "accuracy_grid.png" in html


def test_evaluate_cli(tiny_zoo, tmp_path):
    import json

    from typer.testing import CliRunner

    from rulefinder.cli import app

    runner = CliRunner()
    out = tmp_path / "eval"
    res = runner.invoke(
        app,
        ["evaluate", "--store", tiny_zoo.url, "--out", str(out), "--splits", "lofo_arch,lofo_task",
         "--max-iter", "5", "--feature-set", "stats", "--json"],
    )
    assert res.exit_code == 0, res.output
    metrics = json.loads(res.stdout)
    assert metrics["n_rules"] == 2 and (out / "report.html").exists()
    bad = runner.invoke(app, ["evaluate", "--store", tiny_zoo.url, "--out", str(out), "--splits", "nope"])
    assert bad.exit_code != 0 and "nope" in bad.output
    missing = runner.invoke(app, ["evaluate", "--store", str(tmp_path / "none.zarr"), "--out", str(out)])
    assert missing.exit_code != 0 and "none.zarr" in missing.output


def test_learned_flag_unknown_where_no_bar_is_shipped_uses_the_fallback():
    """learned_threshold NaN means "no bar known" (not "did not learn"): the zoo's definition
    is computed from the store instead; known flags are kept as stored."""
    from rulefinder.classify.dataset import learned_labels

    n = 4
    table = xr.Dataset(
        {
            "rule": ("network", ["backprop", "backprop", "hebbian", "hebbian"]),
            "task": ("network", ["mnist1d", "mnist1d", "mnist1d", "digits"]),
            "arch_family": ("network", ["mlp"] * n),
            "optimizer": ("network", ["sgd"] * n),
            "final_accuracy": ("network", [0.9, 0.9, 0.8, 0.2]),
            "learned": ("network", [False, False, False, True]),
            "learned_threshold": ("network", [np.nan, np.nan, np.nan, 0.7]),
        }
    )
    got = learned_labels(table)
    # mnist1d: no shipped bar -> fallback (chance 0.1 + half of backprop's 0.8 gain = 0.5)
    assert got[:3].tolist() == [True, True, True]
    assert got[3]  # a known flag is kept as stored
    assert not learned_labels(table.drop_vars(["learned", "learned_threshold"]).assign(
        final_accuracy=("network", [0.9, 0.9, 0.3, 0.2])))[2]
