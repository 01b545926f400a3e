"""No circumstance that tells a rule apart: same draws per cell, every variant per rule x
architecture family, the variant and the `learned` flag carried into the store."""

from __future__ import annotations

import json
from collections import defaultdict

import numpy as np
import pytest
import zarr

from rulefinder.store import ZooStore
from tests.test_store_records import make_shard
from training_zoo import baselines
from training_zoo.rules import all_rules, get_rule
from training_zoo.shard import run_shard
from training_zoo.spec import SpecError, expand_spec, load_spec

CELL_FIELDS = ("arch", "inits", "init_scales", "seeds", "batch_size", "input_scale", "spacing", "seed",
               "checkpoints", "units_per_layer", "probes")


def _cell(shard):
    return shard.shard_id.split(".", 2)[2]  # optimizer.task.aI.rJ


def test_every_rule_meets_the_same_circumstances_in_a_cell():
    spec = load_spec("default")
    spec = dict(spec, rule_lr_scale={}, rule_epochs_scale={}, hyperparameters=dict(spec["hyperparameters"], rule_lr={}))
    by_cell = defaultdict(list)
    for s in expand_spec(spec):
        by_cell[_cell(s)].append(s)
    assert len(by_cell) == 3 * 4 * 3  # optimizers x tasks x architecture entries
    for cell, shards in by_cell.items():
        assert len({s.rule for s in shards}) >= 10, cell
        ref = shards[0]
        for s in shards[1:]:
            for f in CELL_FIELDS:
                assert getattr(s, f) == getattr(ref, f), (cell, s.rule, f)
            assert s.lrs == ref.lrs and s.epochs == ref.epochs, (cell, s.rule)


def test_a_spec_seed_names_its_shards_apart_so_seeds_can_share_a_store():
    spec = dict(load_spec("smoke"))
    ids0 = [s.shard_id for s in expand_spec(dict(spec, seed=0))]
    ids1 = [s.shard_id for s in expand_spec(dict(spec, seed=1))]
    assert all(not i.endswith(".s0") for i in ids0)  # seed 0 keeps the ids stores already hold
    assert all(i.endswith(".s1") for i in ids1)
    assert not set(ids0) & set(ids1)


def test_rule_scales_apply_per_rule_and_optimizer_and_nothing_else():
    base = {"name": "t", "rules": ["backprop", "feedback_alignment"], "optimizers": ["sgd", "adam"],
            "variants": "default", "networks_per_shard": 3,
            "hyperparameters": {"lr": {"sgd": [0.01, 0.1], "adam": [0.001, 0.01]}, "epochs": [1, 2]}}
    plain = {(s.rule, s.optimizer): s for s in expand_spec(base)}
    scaled = {(s.rule, s.optimizer): s for s in expand_spec(dict(
        base, rule_lr_scale={"feedback_alignment": {"sgd": 3.0, "adam": 0.5}},
        rule_epochs_scale={"feedback_alignment": 2.0}))}
    assert scaled[("backprop", "sgd")].to_dict() == plain[("backprop", "sgd")].to_dict()
    for opt, k in (("sgd", 3.0), ("adam", 0.5)):
        a, b = plain[("feedback_alignment", opt)], scaled[("feedback_alignment", opt)]
        np.testing.assert_allclose(b.lrs, np.array(a.lrs) * k)
        assert b.epochs == pytest.approx(2 * a.epochs)
        assert b.seeds == a.seeds and b.arch == a.arch
    with pytest.raises(SpecError, match="rule_lr_scale.feedback_alignment"):
        expand_spec(dict(base, rule_lr_scale={"feedback_alignment": -1}))


@pytest.mark.parametrize("name", ["default", "large"])
def test_every_rule_and_architecture_family_has_every_variant(name):
    spec = load_spec(name)
    seen = defaultdict(set)
    for s in expand_spec(spec):
        seen[(s.rule, s.arch["family"])].add(s.variant)
    families = {a["family"] for a in spec["architectures"]}
    for rid, cls in all_rules().items():
        for fam in families & set(cls.supports):
            assert seen[(rid, fam)] == set(cls.variants), (rid, fam)


def test_variants_cross_or_cycle_and_are_checked():
    rule = next(r for r, c in all_rules().items() if len(c.variants) >= 3)
    n_var = len(get_rule(rule).variants)
    base = {"name": "t", "rules": [rule], "optimizers": ["sgd"], "tasks": ["digits"],
            "architectures": [{"family": "mlp"}], "networks_per_shard": 2, "variants": "all"}
    assert [s.variant for s in expand_spec({k: v for k, v in base.items() if k != "variants"})] == ["default"]
    cycled = expand_spec(base)  # one cell, more variants: the cell repeats once per variant
    assert sorted(s.variant for s in cycled) == sorted(get_rule(rule).variants)
    assert len({s.shard_id for s in cycled}) == n_var
    crossed = expand_spec(dict(base, optimizers=["sgd", "adam"], variant_sampling="cross"))
    assert len(crossed) == 2 * n_var
    only = expand_spec(dict(base, variants={rule: ["default"]}))
    assert [s.variant for s in only] == ["default"]
    with pytest.raises(SpecError, match=f"variants.{rule}: unknown variant 'nope'"):
        expand_spec(dict(base, variants={rule: ["nope"]}))
    with pytest.raises(SpecError, match="variant_sampling"):
        expand_spec(dict(base, variant_sampling="sometimes"))


def test_variant_shapes_the_rule_and_its_metadata():
    rule, variant = next((r, v) for r, c in all_rules().items() for v, var in c.variants.items()
                         if v != "default" and var.kwargs and "mlp" in c.supports)
    shards = expand_spec({
        "name": "t", "rules": [rule], "variants": {rule: [variant]}, "optimizers": ["sgd"],
        "tasks": ["digits"], "architectures": [{"family": "mlp", "depth": 1, "width": 8}],
        "networks_per_shard": 2, "hyperparameters": {"lr": {"sgd": [0.05, 0.05]}, "epochs": [0.1, 0.1]},
        "recording": {"checkpoints": 3, "units_per_layer": 4, "probes": 8},
    })
    records = run_shard(shards[0])
    expected = get_rule(rule).from_variant(variant).hyperparameters()
    for r in records:
        assert r.metadata["variant"] == variant
        for k, v in get_rule(rule).variants[variant].kwargs.items():
            if isinstance(v, (int, float, str, bool)):
                assert r.metadata["hyperparameters"]["rule"][k] == expected[k] == v


def test_default_spec_records_128_units_and_large_offers_512_wide_layers():
    assert load_spec("default")["recording"]["units_per_layer"] == 128
    widths = [w for a in load_spec("large")["architectures"] for w in a.get("width", [])]
    assert 512 in widths


# ------------------------------------------------------------------ the learned flag
def test_learning_bar_definition(tmp_path, monkeypatch):
    ref = tmp_path / "ref.json"
    ref.write_text(json.dumps({"cells": {"digits|mlp|sgd": {"baseline": 0.4, "backprop_median": 0.9}}}))
    bar = baselines.learned_threshold("digits", "mlp", "sgd", str(ref))
    assert bar == pytest.approx(0.65)  # 0.4 + 0.5 * (0.9 - 0.4)
    assert baselines.learned_threshold("digits", "cnn", "sgd", str(ref)) is None
    assert baselines.learned(0.65, False, bar) is True
    assert baselines.learned(0.64, False, bar) is False
    assert baselines.learned(0.99, True, bar) is False  # diverged networks never count
    assert baselines.learned(0.99, False, None) is None
    assert baselines.bar_from(0.5, 0.3) == 0.5  # backprop below baseline: the baseline is the bar


def test_run_shard_flags_learned_and_the_store_lists_it(tmp_path, monkeypatch):
    shard = expand_spec({
        "name": "t", "rules": ["backprop"], "variants": "default", "optimizers": ["sgd"], "tasks": ["digits"],
        "architectures": [{"family": "mlp", "depth": 1, "width": 16}], "networks_per_shard": 4,
        "hyperparameters": {"lr": {"sgd": [0.0001, 0.5]}, "epochs": [1, 1]},
        "recording": {"checkpoints": 3, "units_per_layer": 4, "probes": 8},
    })[0]
    monkeypatch.setattr(baselines, "REFERENCE_PATH", tmp_path / "none.json")
    baselines.load_reference.cache_clear()
    assert all(r.metadata["learned"] is None for r in run_shard(shard))  # no bar known
    ref = tmp_path / "ref.json"
    ref.write_text(json.dumps({"cells": {"digits|mlp|sgd": {"baseline": 0.3, "backprop_median": 0.8}}}))
    monkeypatch.setattr(baselines, "REFERENCE_PATH", ref)
    baselines.load_reference.cache_clear()
    try:
        records = run_shard(shard)
    finally:
        baselines.load_reference.cache_clear()
    final = [float(r.recording.coords["performance"].values[-1]) for r in records]
    flags = [r.metadata["learned"] for r in records]
    assert flags == [f >= 0.55 and not r.diverged for f, r in zip(final, records)]
    assert True in flags and False in flags  # lr from 1e-4 (too small) to 0.5
    store = ZooStore.create(str(tmp_path / "zoo.zarr"))
    store.write_shard(records, "s0")
    listing = ZooStore.open(str(tmp_path / "zoo.zarr")).networks()
    assert listing["learned"].values.tolist() == flags
    np.testing.assert_allclose(listing["learned_threshold"].values, 0.55)
    assert listing["variant"].values.tolist() == ["default"] * 4
    assert ZooStore.open(str(tmp_path / "zoo.zarr")).select(learned=True) == [
        r.network_id for r, f in zip(records, flags) if f]


def test_stores_written_before_variant_and_learned_read_as_default_and_false(tmp_path):
    url = str(tmp_path / "old.zarr")
    store = ZooStore.create(url)
    records = make_shard("a", 3)
    records[1].metadata["variant"] = "frSF"
    records[1].metadata["learned"] = True
    store.write_shard(records, "a")
    listing = ZooStore.open(url).networks()
    assert listing["variant"].values.tolist() == ["default", "frSF", "default"]
    assert listing["learned"].values.tolist() == [False, True, False]
    # an old store: the listing attribute without the new fields
    group = zarr.open_group(url, mode="r+")["shards/a"]
    old = {k: v for k, v in group.attrs["networks"].items() if k not in ("variant", "learned")}
    group.attrs["networks"] = old
    listing = ZooStore.open(url).networks()
    assert listing["variant"].values.tolist() == ["default"] * 3
    assert listing["learned"].values.tolist() == [False] * 3
    assert np.isnan(listing["learned_threshold"].values).all()
