"""The store's schema: names, dims and dtypes of every array, and records <-> shard arrays.

Layout (documented for users in ``docs/store.md``)::

    <root>/                       group, attrs: schema_version, kind
      shards/                     group
        <shard_id>/               group, attrs: schema_version, shard_id, network_ids,
                                  weight_stats (names), networks (the listing, LISTING_FIELDS)
          network_id   (network,)                                     str
          rule, family, variant, optimizer, architecture, arch_family, task  (network,)  str
          seed         (network,)                                     int64
          learned      (network,)                                     bool (see docs/store.md)
          learned_threshold (network,)                                float64: its bar (NaN: none known)
          hyperparameters, metadata_json, extras_json, recording_attrs_json (network,)  str (JSON)
          diverged     (network,)                                     bool
          n_checkpoints, n_stimuli, n_units, n_areas, n_layers, n_aux_checkpoints (network,) int32
          session_time (network, checkpoint)                          float64
          accuracy     (network, checkpoint)                          float64  (test accuracy)
          stimulus_id  (network, stimulus_slot)                       str
          stimulus_id_is_int (network,)                               bool
          layer_name   (network, layer_slot)                          str  (areas first, input->output)
          area_order_known (network,)                                 bool (else areas in order of first appearance)
          unit_layer   (network, unit_slot)                           int16 (index into layer_name; -1 = padding)
          activations  (network, checkpoint, stimulus_slot, unit_slot) float16, chunk = one network
          activation_exponent (network,)                              int16: activations hold x * 2**-e
          aux_step     (network, checkpoint)                          float64 (training step of aux checkpoints)
          aux_coords_json (network,)                                  str (JSON: every checkpoint coordinate)
          unit_id      (network, unit_slot)                           str; unit_id_kind (network,) int8 0/1/2 = none/int/str
          train_loss   (network, checkpoint)                          float32
          weight_stats (network, checkpoint, layer_slot, weight_stat) float32, coord weight_stat
          has_weight_stats (network, layer_slot)                      bool
          has_weight_stat (network, weight_stat)                      bool
          activity_change (network, checkpoint, layer_slot)           float32
          has_activity_change (network, layer_slot)                   bool
          complete     (network,)                                     bool, chunk = one network, written last

Every network of a shard is padded to the shard's largest size along each dim (NaN for
floats, "" for strings, -1 for ``unit_layer``); the ``n_*`` counts say how much is real. The
first ``n_areas`` entries of ``layer_name`` are the recording's areas in ``area_order``; layers
that only carry weight statistics or activity change follow.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import xarray as xr

from rulefinder.network_record import METADATA_KEYS, NetworkRecord
from rulefinder.vocabulary import METADATA_DEFAULTS, STRING_METADATA
from rulefinder.recording.model import areas_of, make_recording

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
STORE_KIND = "rulefinder-zoo"
SHARDS_GROUP = "shards"
FLOAT16_MAX = float(np.finfo(np.float16).max)

JSON_FIELDS = ("hyperparameters", "metadata_json", "extras_json", "recording_attrs_json")
COUNT_FIELDS = (
    "n_checkpoints",
    "n_stimuli",
    "n_units",
    "n_areas",
    "n_layers",
    "n_aux_checkpoints",
)
TABLE_FIELDS = (
    ("network_id",) + STRING_METADATA + ("seed",) + JSON_FIELDS + ("diverged", "learned", "learned_threshold")
    + COUNT_FIELDS
)
# The listing (``ZooStore.networks()``): kept twice, as arrays and as the shard group's
# ``networks`` attribute, so that listing a store reads group metadata only (one object per
# shard, or a single object once consolidated) instead of a dozen arrays per shard.
LISTING_FIELDS = (
    ("network_id",)
    + STRING_METADATA
    + ("seed", "hyperparameters", "diverged", "learned", "learned_threshold")
    + COUNT_FIELDS
    + ("final_accuracy",)
)


def _jsonable(value: Any) -> Any:
    """numpy scalars and arrays to plain Python, so metadata survives ``json.dumps``."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    return value


def to_json(value: Any) -> str:
    return json.dumps(_jsonable(value), sort_keys=True, default=repr)


@dataclass
class ShardArrays:
    """A shard's small arrays (written at once) and its sizes; activations go per network."""

    sizes: dict[str, int]
    table: dict[str, np.ndarray]
    bulk: dict[str, tuple[tuple[str, ...], np.ndarray]]
    weight_stat_names: list[str]
    layers: list[list[str]]
    listing: dict[str, list]


def _layers_of(record: NetworkRecord) -> tuple[list[str], int]:
    """The network's layer list: recording areas input -> output, then aux-only layers."""
    names = list(areas_of(record.recording))
    n_areas = len(names)
    for da in (record.weight_stats, record.activity_change):
        for name in da.coords["layer"].values.tolist() if "layer" in da.coords else []:
            if str(name) not in names:
                names.append(str(name))
    return names, n_areas


def _aux_length(record: NetworkRecord) -> int:
    lengths = {
        "weight_stats": record.weight_stats.sizes["checkpoint"],
        "activity_change": record.activity_change.sizes["checkpoint"],
        "train_loss": record.train_loss.sizes.get("checkpoint", record.train_loss.size),
    }
    if len(set(lengths.values())) != 1:
        raise ValueError(
            f"network {record.network_id}: weight_stats, activity_change and train_loss have "
            f"{lengths} checkpoints: expected the same number"
        )
    return next(iter(lengths.values()))


def _layer_coord(da: xr.DataArray, record: NetworkRecord, what: str) -> list[str]:
    if "layer" not in da.coords:
        raise ValueError(f"network {record.network_id}: {what} has no 'layer' coordinate")
    return [str(v) for v in da.coords["layer"].values.tolist()]


def encode_shard(records: Sequence[NetworkRecord]) -> ShardArrays:
    """Everything of a shard but the activations, padded to the shard's largest network."""
    n = len(records)
    layers, n_areas, aux_len = [], [], []
    for r in records:
        names, na = _layers_of(r)
        layers.append(names)
        n_areas.append(na)
        aux_len.append(_aux_length(r))
    stat_names: list[str] = []
    for r in records:
        for s in r.weight_stats.coords["weight_stat"].values.tolist() if "weight_stat" in r.weight_stats.coords else []:
            if str(s) not in stat_names:
                stat_names.append(str(s))
    if not stat_names and records:
        stat_names = [f"stat_{i}" for i in range(max(r.weight_stats.sizes["weight_stat"] for r in records))]

    rec_sizes = [r.recording.transpose("session", "stimulus", "unit").shape for r in records]
    sizes = {
        "network": n,
        "checkpoint": max([s[0] for s in rec_sizes] + aux_len + [1]),
        "stimulus_slot": max([s[1] for s in rec_sizes] + [1]),
        "unit_slot": max([s[2] for s in rec_sizes] + [1]),
        "layer_slot": max([len(x) for x in layers] + [1]),
        "weight_stat": max(len(stat_names), 1),
    }
    C, K, U, L, W = (sizes[k] for k in ("checkpoint", "stimulus_slot", "unit_slot", "layer_slot", "weight_stat"))

    table: dict[str, np.ndarray] = {
        "network_id": np.array([r.network_id for r in records], dtype=object),
        "seed": np.array([int(r.metadata["seed"]) for r in records], dtype=np.int64),
        "diverged": np.array([bool(r.diverged) for r in records], dtype=bool),
        # The zoo's judgement (training_zoo.baselines.learned); absent or unknown (null): False.
        "learned": np.array([bool(r.metadata.get("learned")) for r in records], dtype=bool),
        "learned_threshold": np.array(
            [np.nan if r.metadata.get("learned_threshold") is None else float(r.metadata["learned_threshold"])
             for r in records], dtype=np.float64,
        ),
        "hyperparameters": np.array(
            [to_json(r.metadata.get("hyperparameters", {})) for r in records], dtype=object
        ),
        "metadata_json": np.array([to_json(r.metadata) for r in records], dtype=object),
        "extras_json": np.array([to_json(r.extras) for r in records], dtype=object),
        "recording_attrs_json": np.array(
            [to_json({k: v for k, v in r.recording.attrs.items() if k != "area_order"}) for r in records],
            dtype=object,
        ),
        "n_checkpoints": np.array([s[0] for s in rec_sizes], dtype=np.int32),
        "n_stimuli": np.array([s[1] for s in rec_sizes], dtype=np.int32),
        "n_units": np.array([s[2] for s in rec_sizes], dtype=np.int32),
        "n_areas": np.array(n_areas, dtype=np.int32),
        "n_layers": np.array([len(x) for x in layers], dtype=np.int32),
        "n_aux_checkpoints": np.array(aux_len, dtype=np.int32),
    }
    for key in STRING_METADATA:
        table[key] = np.array(
            [str(r.metadata[key] if key in r.metadata else METADATA_DEFAULTS[key]) for r in records], dtype=object
        )

    session_time = np.full((n, C), np.nan)
    accuracy = np.full((n, C), np.nan)
    stimulus_id = np.full((n, K), "", dtype=object)
    stim_is_int = np.zeros(n, dtype=bool)
    layer_name = np.full((n, L), "", dtype=object)
    unit_layer = np.full((n, U), -1, dtype=np.int16)
    aux_step = np.full((n, C), np.nan)
    aux_coords_json = np.full(n, "", dtype=object)
    unit_id = np.full((n, U), "", dtype=object)
    unit_id_kind = np.zeros(n, dtype=np.int8)
    area_order_known = np.zeros(n, dtype=bool)
    exponent = np.zeros(n, dtype=np.int16)
    train_loss = np.full((n, C), np.nan, dtype=np.float32)
    weight_stats = np.full((n, C, L, W), np.nan, dtype=np.float32)
    has_ws = np.zeros((n, L), dtype=bool)
    has_stat = np.zeros((n, W), dtype=bool)
    activity_change = np.full((n, C, L), np.nan, dtype=np.float32)
    has_ac = np.zeros((n, L), dtype=bool)

    for i, r in enumerate(records):
        rec = r.recording.transpose("session", "stimulus", "unit")
        c, k, u = rec.shape
        session_time[i, :c] = rec.coords["session_time"].values
        if "performance" in rec.coords:
            accuracy[i, :c] = rec.coords["performance"].values
        stim = rec.coords["stimulus"].values
        stim_is_int[i] = stim.dtype.kind in "iu"
        stimulus_id[i, :k] = [str(s) for s in stim.tolist()]
        names = layers[i]
        layer_name[i, : len(names)] = names
        index = {name: j for j, name in enumerate(names)}
        unit_layer[i, :u] = [index[a] for a in rec.coords["unit_area"].values.tolist()]

        a = aux_len[i]
        ws = r.weight_stats
        aux_coords = {
            name: coord.values.tolist()
            for name, coord in ws.coords.items()
            if coord.dims == ("checkpoint",)
        }
        aux_coords_json[i] = to_json(aux_coords)
        for name in ("step", "checkpoint"):
            values = np.asarray(aux_coords.get(name, []))
            if values.size == a and values.dtype.kind in "iuf":
                aux_step[i, :a] = values
                break
        else:
            if a == c:  # the zoo's aux checkpoints are its sessions
                aux_step[i, :a] = session_time[i, :c]
        area_order_known[i] = bool(rec.attrs.get("area_order"))
        exponent[i] = activation_exponent(rec.values)
        if "unit" in rec.coords:
            ids = rec.coords["unit"].values
            unit_id_kind[i] = 1 if ids.dtype.kind in "iu" else 2
            unit_id[i, :u] = [str(v) for v in ids.tolist()]
        train_loss[i, :a] = np.asarray(r.train_loss.values, dtype=np.float32).reshape(a)
        ws_layers = _layer_coord(ws, r, "weight_stats")
        ws_stats = (
            [str(s) for s in ws.coords["weight_stat"].values.tolist()]
            if "weight_stat" in ws.coords
            else stat_names[: ws.sizes["weight_stat"]]
        )
        slots = [index[name] for name in ws_layers]
        stat_idx = [stat_names.index(s) for s in ws_stats]
        vals = ws.transpose("checkpoint", "layer", "weight_stat").values.astype(np.float32)
        block = weight_stats[i, :a]
        block[np.ix_(np.arange(a), slots, stat_idx)] = vals
        has_ws[i, slots] = True
        has_stat[i, stat_idx] = True
        ac = r.activity_change
        ac_slots = [index[name] for name in _layer_coord(ac, r, "activity_change")]
        activity_change[i, :a][:, ac_slots] = ac.transpose("checkpoint", "layer").values
        has_ac[i, ac_slots] = True

    bulk = {
        "session_time": (("network", "checkpoint"), session_time),
        "accuracy": (("network", "checkpoint"), accuracy),
        "stimulus_id": (("network", "stimulus_slot"), stimulus_id),
        "stimulus_id_is_int": (("network",), stim_is_int),
        "layer_name": (("network", "layer_slot"), layer_name),
        "unit_layer": (("network", "unit_slot"), unit_layer),
        "aux_step": (("network", "checkpoint"), aux_step),
        "unit_id": (("network", "unit_slot"), unit_id),
        "unit_id_kind": (("network",), unit_id_kind),
        "area_order_known": (("network",), area_order_known),
        "activation_exponent": (("network",), exponent),
        "aux_coords_json": (("network",), aux_coords_json),
        "train_loss": (("network", "checkpoint"), train_loss),
        "weight_stats": (("network", "checkpoint", "layer_slot", "weight_stat"), weight_stats),
        "has_weight_stats": (("network", "layer_slot"), has_ws),
        "has_weight_stat": (("network", "weight_stat"), has_stat),
        "activity_change": (("network", "checkpoint", "layer_slot"), activity_change),
        "has_activity_change": (("network", "layer_slot"), has_ac),
    }
    final = [
        None if c == 0 or np.isnan(accuracy[i, c - 1]) else float(accuracy[i, c - 1])
        for i, c in enumerate(table["n_checkpoints"].tolist())
    ]
    listing = {
        name: (final if name == "final_accuracy"
               else [None if np.isnan(v) else float(v) for v in table[name]] if name == "learned_threshold"
               else _jsonable(table[name].tolist()))
        for name in LISTING_FIELDS
    }
    return ShardArrays(
        sizes=sizes,
        table=table,
        bulk=bulk,
        weight_stat_names=stat_names,
        layers=layers,
        listing=listing,
    )


def activation_exponent(values: np.ndarray) -> int:
    """Power of two ``e`` to store ``x * 2**-e`` in float16 instead of ``x``.

    float16 holds normal numbers from 2**-14 to 65504. A network whose largest activation lies
    in [2**-8, 65504] is stored as is (``e = 0``: the stored values are exactly the float16
    rounding of the originals). Any other (a Hebbian network grown to 1e6, a network of tiny
    activations) is shifted so that its largest value lands in [2**14, 2**15): a power-of-two
    shift is exact, so nothing is saturated or flushed to zero and the relative precision is
    float16's (2**-11) everywhere in the 2**29 range below the maximum.
    """
    finite = np.abs(values[np.isfinite(values)])
    top = float(finite.max()) if finite.size else 0.0
    if top == 0.0 or 2.0**-8 <= top <= FLOAT16_MAX:
        return 0
    return int(np.floor(np.log2(top))) - 14


def activations_block(record: NetworkRecord, sizes: dict[str, int], exponent: int = 0) -> np.ndarray:
    """One network's padded float16 chunk ``(1, checkpoint, stimulus_slot, unit_slot)``.

    Holds ``x * 2**-exponent`` (see :func:`activation_exponent`).
    """
    rec = record.recording.transpose("session", "stimulus", "unit").values
    if exponent:
        rec = np.ldexp(rec, -exponent)
    c, k, u = rec.shape
    block = np.full(
        (1, sizes["checkpoint"], sizes["stimulus_slot"], sizes["unit_slot"]), np.nan, dtype=np.float16
    )
    with np.errstate(over="ignore"):
        block[0, :c, :k, :u] = rec
    # A valid recording holds no inf, so an inf here is a float16 overflow; with the exponent
    # chosen by activation_exponent it cannot happen, but never store an inf.
    big = np.isinf(block)
    if big.any():
        log.warning(
            "network %s: %d values beyond float16 range saturated to +-%g",
            record.network_id,
            int(big.sum()),
            FLOAT16_MAX,
        )
        block[big] = np.sign(block[big]) * FLOAT16_MAX
    return block


def decode_recording(
    activations: np.ndarray, row: dict[str, Any], source: str
) -> xr.DataArray:
    """One network's recording from its activation chunk and its row of small arrays."""
    c, k, u, na = (int(row[f]) for f in ("n_checkpoints", "n_stimuli", "n_units", "n_areas"))
    layer_name = [str(s) for s in row["layer_name"][: int(row["n_layers"])]]
    unit_area = [layer_name[j] for j in row["unit_layer"][:u]]
    stim = np.array([str(s) for s in row["stimulus_id"][:k]])
    if row["stimulus_id_is_int"]:
        stim = stim.astype(np.int64)
    perf = np.asarray(row["accuracy"][:c], dtype=np.float64)
    kind = int(row.get("unit_id_kind", 0))
    unit = None
    if kind:
        unit = np.array([str(v) for v in row["unit_id"][:u]])
        unit = unit.astype(np.int64) if kind == 1 else unit
    values = np.asarray(activations[:c, :k, :u], dtype=np.float64)
    exponent = int(row.get("activation_exponent", 0))
    return make_recording(
        np.ldexp(values, exponent) if exponent else values,
        session_time=np.asarray(row["session_time"][:c], dtype=np.float64),
        unit_area=np.array(unit_area, dtype=str),
        stimulus=stim,
        performance=None if np.isnan(perf).all() else perf,
        area_order=layer_name[:na] if row.get("area_order_known", True) else None,
        unit=unit,
        source=source,
        attrs=json.loads(row["recording_attrs_json"] or "{}"),
    )


def decode_aux(row: dict[str, Any], weight_stat_names: Sequence[str]) -> dict[str, xr.DataArray]:
    """weight_stats, activity_change and train_loss of one network from its row."""
    a = int(row["n_aux_checkpoints"])
    layer_name = np.array([str(s) for s in row["layer_name"][: int(row["n_layers"])]])
    ckpt = {
        name: ("checkpoint", np.asarray(values)) if name != "checkpoint" else np.asarray(values)
        for name, values in json.loads(str(row["aux_coords_json"]) or "{}").items()
    }
    ws_mask = np.asarray(row["has_weight_stats"][: len(layer_name)], dtype=bool)
    ws = np.asarray(row["weight_stats"][:a, : len(layer_name)], dtype=np.float32)[:, ws_mask]
    stats = list(weight_stat_names)
    present = np.asarray(row["has_weight_stat"][: len(stats)], dtype=bool)
    weight_stats = xr.DataArray(
        ws[:, :, present],
        dims=("checkpoint", "layer", "weight_stat"),
        coords={**ckpt, "layer": layer_name[ws_mask], "weight_stat": np.array(stats)[present]},
        name="weight_stats",
    )
    ac_mask = np.asarray(row["has_activity_change"][: len(layer_name)], dtype=bool)
    activity_change = xr.DataArray(
        np.asarray(row["activity_change"][:a, : len(layer_name)], dtype=np.float32)[:, ac_mask],
        dims=("checkpoint", "layer"),
        coords={**ckpt, "layer": layer_name[ac_mask]},
        name="activity_change",
    )
    train_loss = xr.DataArray(
        np.asarray(row["train_loss"][:a], dtype=np.float32),
        dims=("checkpoint",),
        coords=ckpt,
        name="train_loss",
    )
    return {
        "weight_stats": weight_stats,
        "activity_change": activity_change,
        "train_loss": train_loss,
    }


def check_metadata(record: NetworkRecord) -> None:
    missing = [k for k in METADATA_KEYS if k not in record.metadata]
    if missing:
        raise ValueError(f"network {record.network_id}: metadata lacks {missing}")
