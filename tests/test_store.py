"""The Zarr zoo store: round trips, mixed shapes, URLs, schema version, info, crash leftovers."""

from __future__ import annotations

import json
import uuid

import numpy as np
import pytest
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.test_store_records import make_network_record, make_shard

from rulefinder.recording import make_recording, validate_recording
from rulefinder.store import (
    SCHEMA_VERSION,
    StoreError,
    StoreNotFoundError,
    ZooStore,
    store_info,
)


def memory_url() -> str:
    return f"memory://stores/{uuid.uuid4().hex}.zarr"


def f16(values: np.ndarray) -> np.ndarray:
    return np.asarray(values, dtype=np.float16).astype(np.float64)


def assert_same_network(back, original) -> None:
    """The stored network equals the original up to float16 (activations) / float32 rounding."""
    rec, orig = back.recording, original.recording
    validate_recording(rec)
    # Identical (coordinates, attributes, name) to the original with float16-rounded values.
    xr.testing.assert_identical(rec, orig.copy(data=f16(orig.values)))
    assert back.metadata == original.metadata
    assert back.extras == original.extras
    assert back.diverged == original.diverged
    for name in ("weight_stats", "activity_change", "train_loss"):
        got, want = getattr(back, name), getattr(original, name)
        xr.testing.assert_identical(
            got.rename(None), want.astype(np.float32).rename(None)
        )


def test_round_trip_of_records_in_memory_url():
    url = memory_url()
    store = ZooStore.create(url)
    records = make_shard("a", 4)
    assert store.write_shard(records, "a") == [r.network_id for r in records]
    reopened = ZooStore.open(url)
    for original in records:
        assert_same_network(reopened.record(original.network_id), original)
        xr.testing.assert_identical(
            reopened.recording(original.network_id), reopened.record(original.network_id).recording
        )
    assert reopened.incomplete() == []


def test_round_trip_on_a_local_path(tmp_path):
    url = str(tmp_path / "zoo.zarr")
    ZooStore.create(url).write_shard(make_shard("a", 2), "a")
    store = ZooStore.open(url)
    assert (tmp_path / "zoo.zarr" / "zarr.json").exists()
    assert_same_network(store.record("a/1"), make_shard("a", 2)[1])


def test_networks_of_different_depths_widths_stimuli_and_checkpoints_side_by_side():
    url = memory_url()
    store = ZooStore.create(url)
    shapes = [
        dict(widths=(3,), stimuli=2, checkpoints=3),
        dict(widths=(16, 8, 4, 2), stimuli=12, checkpoints=7),
        dict(widths=(1, 30), stimuli=5, checkpoints=4),
    ]
    mixed = [make_network_record(f"m/{i}", seed=i, **kw) for i, kw in enumerate(shapes)]
    store.write_shard(mixed, "m")
    # A second shard of another shape entirely, in the same store.
    other = [make_network_record("o/0", seed=7, widths=(40, 40), stimuli=20, checkpoints=11)]
    store.write_shard(other, "o")
    reopened = ZooStore.open(url)
    table = reopened.networks()
    assert table["n_units"].sel(network="m/1").item() == 30
    assert table["n_areas"].sel(network="m/1").item() == 4
    assert table["n_stimuli"].sel(network="o/0").item() == 20
    for original in mixed + other:
        back = reopened.record(original.network_id)
        assert_same_network(back, original)
    # The padded shard layout: one network per activation chunk, padding NaN beyond its counts.
    ds = reopened.dataset("m")
    assert ds["activations"].dtype == np.float16
    assert ds["activations"].encoding["chunks"][0] == 1
    assert ds.sizes["unit_slot"] == 31  # the widest network, (1, 30)
    assert np.isnan(ds["activations"].isel(network=0, unit_slot=slice(3, None)).values).all()
    # The listing (group attributes) and the arrays say the same.
    listed = table.sel(network=[r.network_id for r in mixed])
    for name in ("rule", "task", "architecture", "seed", "hyperparameters", "n_units", "n_layers"):
        np.testing.assert_array_equal(np.asarray(ds[name].values.tolist()), listed[name].values)
    np.testing.assert_array_equal(
        listed["final_accuracy"].values, [r.test_accuracy[-1] for r in mixed]
    )


def test_string_stimuli_interleaved_areas_no_area_order_no_performance():
    original = make_network_record("s/0", seed=1)
    rng = np.random.default_rng(5)
    original.recording = make_recording(
        rng.normal(size=(4, 3, 6)),
        session_time=[0.0, 0.5, 2.0, 7.5],
        unit_area=["V1", "LM", "V1", "AL", "LM", "V1"],  # areas interleaved, depth unknown
        stimulus=["grating", "plaid", "natural"],
    )
    original.activity_change = original.activity_change.isel(layer=[0])
    original.activity_change = original.activity_change.assign_coords(layer=["V1"])
    original.weight_stats = original.weight_stats.assign_coords(layer=["V1", "LM", "w"]).isel(
        checkpoint=slice(0, 4)
    )
    original.activity_change = original.activity_change.isel(checkpoint=slice(0, 4))
    original.train_loss = original.train_loss.isel(checkpoint=slice(0, 4))
    store = ZooStore.create(memory_url())
    store.write_shard([original], "s")
    back = store.record("s/0")
    assert "area_order" not in back.recording.attrs and "performance" not in back.recording.coords
    assert_same_network(back, original)


def test_open_is_lazy_a_damaged_chunk_only_hurts_its_own_network(tmp_path):
    url = str(tmp_path / "zoo.zarr")
    ZooStore.create(url).write_shard(make_shard("a", 3), "a")
    chunk = tmp_path / "zoo.zarr" / "shards" / "a" / "activations" / "c" / "1" / "0" / "0" / "0"
    assert chunk.exists()
    chunk.write_bytes(b"not a blosc frame")
    store = ZooStore.open(url)
    assert store.networks().sizes["network"] == 3  # opening and listing never touch activations
    assert store.recording("a/0").sizes["unit"] == 9
    with pytest.raises(Exception):  # noqa: B017 - whatever the codec raises on garbage
        store.recording("a/1")


def test_activations_beyond_float16_range_keep_float16_relative_precision():
    """Huge (1e6) and tiny (1e-7) networks are shifted by a power of two, not saturated or
    flushed to zero; ordinary networks are stored as plain float16 (checked elsewhere)."""
    store = ZooStore.create(memory_url())
    huge, tiny = make_network_record("big/0", seed=3), make_network_record("big/1", seed=4)
    huge.recording = huge.recording * 1e6
    tiny.recording = tiny.recording * 1e-7
    store.write_shard([huge, tiny], "big")
    exponents = store.dataset("big")["activation_exponent"].values
    assert exponents[0] > 0 and exponents[1] < 0
    for original in (huge, tiny):
        back = store.recording(original.network_id)
        validate_recording(back)
        want = original.recording.values
        np.testing.assert_array_equal(np.isnan(back.values), np.isnan(want))
        # float16 has an 11-bit significand: relative error at most 2**-11.
        ok = ~np.isnan(want)
        np.testing.assert_allclose(back.values[ok], want[ok], rtol=2.0**-11, atol=0)
        assert (back.values[ok] != 0).all()


def test_schema_version_attribute_and_refusal_of_other_versions(tmp_path):
    url = str(tmp_path / "zoo.zarr")
    store = ZooStore.create(url)
    store.write_shard(make_shard("a", 1), "a")
    root = json.loads((tmp_path / "zoo.zarr" / "zarr.json").read_text())
    assert root["attributes"]["schema_version"] == SCHEMA_VERSION
    shard = json.loads((tmp_path / "zoo.zarr" / "shards" / "a" / "zarr.json").read_text())
    assert shard["attributes"]["schema_version"] == SCHEMA_VERSION
    assert ZooStore.open(url).schema_version == SCHEMA_VERSION
    root["attributes"]["schema_version"] = SCHEMA_VERSION + 1
    (tmp_path / "zoo.zarr" / "zarr.json").write_text(json.dumps(root))
    with pytest.raises(StoreError, match="schema_version"):
        ZooStore.open(url)


def test_create_refuses_an_existing_store_unless_exist_ok():
    url = memory_url()
    ZooStore.create(url).write_shard(make_shard("a", 1), "a")
    with pytest.raises(StoreError, match="exists"):
        ZooStore.create(url)
    again = ZooStore.create(url, exist_ok=True)
    assert again.select() == ["a/0"]


def test_open_of_a_missing_store_or_another_zarr_fails_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="no zoo store"):
        ZooStore.open(str(tmp_path / "absent.zarr"))
    with pytest.raises(StoreNotFoundError):
        store_info(memory_url())
    import zarr

    zarr.open_group(str(tmp_path / "other.zarr"), mode="w", zarr_format=3)
    with pytest.raises(StoreError, match="kind"):
        ZooStore.open(str(tmp_path / "other.zarr"))


def test_writing_rules_shard_exists_duplicates_read_only():
    url = memory_url()
    store = ZooStore.create(url)
    store.write_shard(make_shard("a", 2), "a")
    with pytest.raises(StoreError, match="exists"):
        store.write_shard(make_shard("a", 2), "a")
    with pytest.raises(ValueError, match="repeated"):
        store.write_shard([make_network_record("d/0"), make_network_record("d/0")], "d")
    with pytest.raises(ValueError, match="shard id"):
        store.write_shard(make_shard("x", 1), "../escape")
    with pytest.raises(StoreError, match="read-only"):
        ZooStore.open(url).write_shard(make_shard("b", 1), "b")
    replaced = make_shard("a", 1, seed0=50)
    store.write_shard(replaced, "a", overwrite=True)
    reopened = ZooStore.open(url)
    assert list(reopened.networks()["network"].values) == ["a/0"]
    assert reopened.record("a/0").metadata["seed"] == 50


def test_consolidate_then_a_later_shard_is_still_seen():
    url = memory_url()
    store = ZooStore.create(url)
    store.write_shard(make_shard("a", 2), "a")
    store.consolidate()
    opened = ZooStore.open(url)
    assert opened.is_consolidated
    assert opened.networks().sizes["network"] == 2
    assert_same_network(opened.record("a/1"), make_shard("a", 2)[1])
    assert opened.dataset("a")["activations"].shape[0] == 2
    ZooStore.open(url, mode="r+").write_shard(make_shard("b", 3), "b")
    later = ZooStore.open(url)
    assert not later.is_consolidated  # the writer dropped the stale listing
    assert later.networks().sizes["network"] == 5


def test_a_writer_that_fails_mid_shard_leaves_a_readable_store_listing_the_rest():
    url = memory_url()
    store = ZooStore.create(url)
    records = make_shard("c", 5)

    def fail_after_two(i, network_id):
        if i == 1:
            raise RuntimeError("writer died")

    with pytest.raises(RuntimeError, match="writer died"):
        store.write_shard(records, "c", on_network=fail_after_two, write_batch=1)
    reopened = ZooStore.open(url)
    assert reopened.incomplete() == ["c/2", "c/3", "c/4"]
    assert reopened.select() == ["c/0", "c/1"]
    assert_same_network(reopened.record("c/1"), records[1])
    with pytest.raises(StoreError, match="incomplete"):
        reopened.recording("c/3")
    info = store_info(url)
    assert (info.complete, info.incomplete, info.networks) == (2, 3, 5)
    assert info.incomplete_networks == ["c/2", "c/3", "c/4"]


def test_select_and_iter_recordings_filter_and_skip_diverged():
    url = memory_url()
    store = ZooStore.create(url)
    records = make_shard("a", 6)
    records[4].diverged = True
    records.append(make_network_record("b/0", seed=10, task="mnist1d"))
    store.write_shard(records, "a")
    table = store.networks()
    backprop = [str(i) for i, r, d in zip(table["network"].values, table["rule"].values, table["diverged"].values) if r == "backprop" and not d]
    got = [nid for nid, rec in store.iter_recordings(rule="backprop")]
    assert got == backprop
    assert "a/4" not in store.select()
    assert "a/4" in store.select(include_diverged=True)
    assert store.select(task="mnist1d") == ["b/0"]
    assert store.select(rule=["hebbian", "feedback_alignment"], task="digits") == [
        r.network_id for r in records if r.metadata["rule"] != "backprop" and r.metadata["task"] == "digits" and not r.diverged
    ]
    for _, rec in store.iter_recordings(task="digits"):
        validate_recording(rec)
    with pytest.raises(KeyError, match="no metadata field"):
        store.select(colour="red")


def test_store_info_counts_and_text():
    url = memory_url()
    store = ZooStore.create(url)
    records = make_shard("a", 5) + [make_network_record("a/x", seed=20, widths=(6, 6, 6), task="mnist1d")]
    records[2].diverged = True
    store.write_shard(records, "a")
    store.write_shard(make_shard("b", 2, seed0=100), "b")
    store.consolidate()
    info = store_info(url)
    all_records = records + make_shard("b", 2, seed0=100)
    want_rules: dict[str, int] = {}
    for r in all_records:
        want_rules[r.metadata["rule"]] = want_rules.get(r.metadata["rule"], 0) + 1
    assert info.networks_per_rule == dict(sorted(want_rules.items()))
    assert info.networks_per_task == {"digits": 7, "mnist1d": 1}
    assert info.networks_per_architecture == {"mlp2x5": 7, "mlp3x6": 1}
    assert sum(info.networks_per_optimizer.values()) == 8
    assert (info.networks, info.complete, info.incomplete, info.diverged) == (8, 8, 0, 1)
    assert info.shards == 2 and info.consolidated and info.schema_version == SCHEMA_VERSION
    assert info.bytes_on_disk > 0 and info.bytes_per_network == info.bytes_on_disk / 8
    text = info.to_text()
    assert "8 complete" in text and "mnist1d" in text and "schema version" in text
    assert json.loads(info.model_dump_json(indent=2))["networks_per_task"]["mnist1d"] == 1


def test_store_info_of_an_empty_store():
    url = memory_url()
    ZooStore.create(url)
    info = store_info(url)
    assert (info.networks, info.complete, info.shards) == (0, 0, 0)
    assert info.bytes_per_network is None
    assert "0 listed" in info.to_text()


@settings(max_examples=15)
@given(
    sessions=st.integers(3, 6),
    stimuli=st.integers(2, 6),
    widths=st.lists(st.integers(1, 6), min_size=1, max_size=4),
    seed=st.integers(0, 1000),
)
def test_round_trip_of_any_shape(sessions, stimuli, widths, seed):
    original = make_network_record("h/0", seed=seed, checkpoints=sessions, stimuli=stimuli, widths=tuple(widths))
    store = ZooStore.create(memory_url())
    store.write_shard([original, make_network_record("h/1", seed=seed + 1)], "h")
    assert_same_network(store.record("h/0"), original)
