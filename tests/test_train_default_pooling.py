"""benchmarks/train_default.py pooling several zoo stores (a zoo grown at two settings): the
first store keeps the split it has alone, and a later store's shard follows the first store's
shard of the same name up to its spec-seed suffix."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
from tests.test_store_records import make_shard

from rulefinder.store import ZooStore

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import train_default as td  # noqa: E402

RULES = ("backprop", "feedback_alignment")


def _store(suffix: str, cells: list[str], id_prefix: str) -> str:
    url = f"memory://pool/{uuid.uuid4().hex}.zarr"
    store = ZooStore.create(url)
    for k, cell in enumerate(cells):
        rule = RULES[k % 2]
        store.write_shard(make_shard(f"{id_prefix}{cell}", 2, seed0=10 * k, rule=rule), f"{cell}{suffix}")
    return url


def test_base_shard_strips_only_a_spec_seed_suffix():
    assert td.base_shard("backprop.default.adam.digits.a0.r1.s2") == "backprop.default.adam.digits.a0.r1"
    assert td.base_shard("backprop.default.adam.digits.a0.r1") == "backprop.default.adam.digits.a0.r1"
    assert td.base_shard("x.sgd") == "x.sgd"
    assert td.base_shard("s2") == "s2"


def test_pooled_split_keeps_the_first_store_split_and_pairs_shards():
    cells = [f"c{k}.r{k % 3}" for k in range(12)]
    a = _store("", cells, "a/")
    b = _store(".s2", cells[:10] + ["new0.r0", "new1.r1"], "b/")
    _, table_a, held_a = td.load_zoo(a, 0, 0.25, 0)
    _, table, held = td.load_zoos([a, b], 0, 0.25, 0)
    store = table["store"].values
    np.testing.assert_array_equal(held[store == 0], held_a)
    np.testing.assert_array_equal(table["network"].values[store == 0], table_a["network"].values)
    side = dict(zip(table_a["shard"].values.astype(str), held_a.tolist()))
    shards_b = table["shard"].values.astype(str)[store == 1]
    for s, h in zip(shards_b, held[store == 1], strict=True):
        if not s.startswith("new"):
            assert h == side[td.base_shard(s)], s
    # one shard is never on both sides
    shards = table["shard"].values.astype(str)
    assert not set(shards[held]) & set(shards[~held])
    assert held.any() and (~held).any()


def test_pooled_stores_must_not_share_network_ids():
    cells = ["c0.r0", "c1.r1", "c2.r2", "c3.r0"]
    a, b = _store("", cells, "same/"), _store(".s2", cells, "same/")
    with pytest.raises(ValueError, match="more than one store"):
        td.load_zoos([a, b], 0, 0.25, 0)


def test_pooled_spec_records_both_zoos_and_the_shared_recording():
    rec = {"probes": 64, "checkpoints": 21}
    one = {"name": "zoo10k", "recording": rec}
    assert td.pooled_spec([one]) is one
    both = td.pooled_spec([one, {"name": "zoo15k", "recording": dict(rec)}])
    assert both["name"] == "zoo10k+zoo15k" and both["recording"] == rec and len(both["zoos"]) == 2
    assert "recording" not in td.pooled_spec([one, {"name": "z", "recording": {"probes": 32}}])
