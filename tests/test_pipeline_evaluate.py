"""The pipeline's evaluate stage without Ray: fold models fitted on the features stage's
stored rows (as the shipped model is), balanced-accuracy-only splits without the calibration
pass, fold fits in worker processes, and per-stage CPU in the summary."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.tasks import shard_features
from rulefinder.classify import evaluate as ev
from rulefinder.classify.dataset import network_table
from rulefinder.classify.estimator import TARGETS, RuleIdentifier
from rulefinder.store import ZooStore
from rulefinder.store.features import read_features

PARAMS = {"calibration_folds": 2, "max_iter": 50}
VIRTUAL = {"virtual": [{"seed": 0, "steps": [{"op": "keep_sessions", "n": 3}]}], "n_draws": 1}
SPEC = {
    "name": "evaluate-stage", "seed": 0, "rules": ["backprop", "feedback_alignment"], "variants": "default",
    "optimizers": ["sgd", "adam"], "tasks": ["digits"],
    "architectures": [{"family": "mlp", "depth": [1], "width": [8]}, {"family": "cnn", "channels": [[2, 4]]}],
    "networks_per_shard": 2,
    "hyperparameters": {"epochs": [0.1, 0.1], "batch_size": [128]},
    "recording": {"checkpoints": 4, "units_per_layer": 4, "probes": 8},
}


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """16 tiny networks in 8 shards (2 rules x 2 optimizers x mlp/cnn) with stored feature rows
    (each network as recorded plus one virtual draw), as the features stage writes them."""
    from training_zoo.local_run import run_zoo

    url = str(tmp_path_factory.mktemp("zoo") / "z.zarr")
    run_zoo(SPEC, url, progress=False)
    store = ZooStore.open(url)
    for shard in store.shard_ids():
        shard_features(shard, url, VIRTUAL, "fp", estimator_params=PARAMS)
    return store, read_features(url)


def test_uncalibrated_folds_predict_exactly_what_calibrated_ones_do(zoo):
    store, rows = zoo
    table = network_table(store)
    plain, _, _ = ev._stored_rows(store, table["network"].values.tolist(), rows, RuleIdentifier(**PARAMS), None, False)
    train = np.flatnonzero(table["arch_family"].values == "mlp")
    test = np.flatnonzero(table["arch_family"].values == "cnn")
    calibrated = ev._fit(plain, table, train, PARAMS)
    cheap = ev._fit(plain, table, train, ev.uncalibrated(PARAMS))
    assert cheap.calibration_folds == 0 and calibrated.temperature_["rule"] != 1.0
    sub = ev._subset_rows(plain, test)
    a, b = calibrated.predict_proba_features(sub), cheap.predict_proba_features(sub)
    for t in TARGETS:
        np.testing.assert_array_equal(a[t].argmax(axis=1), b[t].argmax(axis=1))


def test_stored_rows_give_each_network_as_recorded_and_its_draws(zoo):
    store, rows = zoo
    ids = network_table(store)["network"].values.tolist()
    plain, trainable, (draws, net) = ev._stored_rows(store, ids, rows, RuleIdentifier(**PARAMS), None, False)
    assert trainable.all() and sorted(set(plain.coords["recording"].values.tolist())) == list(range(len(ids)))
    assert len(net) == len(ids) and sorted(net.tolist()) == list(range(len(ids)))  # one draw per network
    stored = rows.isel(sample=np.flatnonzero(rows.coords["virtual"].values == ""))
    first = stored.isel(sample=np.flatnonzero(stored.coords["network"].values == ids[3]))
    np.testing.assert_array_equal(plain.isel(sample=np.flatnonzero(plain.coords["recording"].values == 3)).values,
                                  first.values)
    # Networks without stored rows (a learned_only fit) are tested on computed rows, never trained on.
    some = rows.isel(sample=np.flatnonzero(rows.coords["network"].values != ids[0]))
    plain2, trainable2, _ = ev._stored_rows(store, ids, some, RuleIdentifier(**PARAMS), None, False)
    assert not trainable2[0] and trainable2[1:].all()
    assert (plain2.coords["recording"].values == 0).any()
    with pytest.raises(ValueError, match="feature_set"):
        ev._stored_rows(store, ids, rows, RuleIdentifier(**{**PARAMS, "n_times": 4}), None, False)


def test_evaluate_on_stored_rows_in_worker_processes_matches_one_process(zoo, tmp_path):
    store, rows = zoo
    kw = dict(splits=("lofo_arch", "controls", "grid"), params=PARAMS, grid_networks=4, control_networks=2,
              grid=((2, "all"), (3,), ("none",)), progress=False, train_rows=rows, cache_dir=tmp_path / "cache")
    one = ev.evaluate(store, tmp_path / "one", n_jobs=1, **kw)
    two = ev.evaluate(store, tmp_path / "two", n_jobs=2, **kw)
    assert not (tmp_path / "cache").exists()  # nothing featurised again
    assert one["fold_training"].startswith("stored rows") and "rule_bacc_lofo_arch_augmented" not in one
    assert one["timing"]["fits"] == 2 and two["timing"]["n_jobs"] == 2 and two["timing"]["fit_cpu_s"] > 0
    drop = ("seconds", "timing")
    assert {k: v for k, v in one.items() if k not in drop} == {k: v for k, v in two.items() if k not in drop}
    assert "grid" in one and one["controls_n"] > 0  # the grid scores learned networks only (few here)


def test_evaluate_stage_reports_cpu_and_keeps_timing_out_of_the_card(zoo, tmp_path, monkeypatch):
    from pipelines import stages
    from pipelines.config import load_config
    from pipelines.run import Pipeline

    monkeypatch.setenv("RULEFINDER_DATA_DIR", str(tmp_path / "data"))
    store, _ = zoo
    cfg = load_config({"name": "t", "train": {"zoo": SPEC}, "features": VIRTUAL, "fit": {"params": PARAMS},
                       "evaluate": {"splits": ["lofo_arch", "grid"],
                                    "options": {"grid_networks": 4, "grid": [[2], [3], ["none"]], "n_jobs": 1}}})
    ctx = stages.StageContext(config=cfg, store_url=store.url, out=tmp_path / "out", name="t-run")
    pipe = Pipeline(cfg, store=store.url, out=tmp_path / "out")
    for name, fn in (("fit", stages.fit), ("evaluate", stages.evaluate)):
        pipe._timed(name, lambda fn=fn, name=name: pipe.stages[name].detail.update(fn(ctx)))
        assert pipe.stages[name].cpu_s > 0
    detail = pipe.stages["evaluate"].detail
    assert detail["timing"]["fits"] == 2 and detail["worker_cpu_s"] == 0.0  # one process: the driver's CPU
    card = stages._card(ctx)
    assert "timing" not in ctx.state["metrics"] and "timing" not in card.metrics and "grid" not in card.metrics
