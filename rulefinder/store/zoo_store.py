"""``ZooStore``: the training zoo in Zarr, written in shards, read lazily through xarray.

Parallel writers: every writer owns one shard, a sub-group ``shards/<shard_id>`` that no
other process touches, so writers never share a chunk or a metadata object and need no lock
or coordinator (a Ray task, a SLURM array job or a laptop process all work the same way, on a
local disk or an object store). Pre-allocated slot ranges in one global array would have
needed the zoo's largest network and its size known up front and a padded global array for all
of it; a shard only pads to its own largest network.

Crash safety: a shard's group, its per-network metadata and every small array are written
first, then each network's activation chunk, then that network's ``complete`` flag (a chunk of
its own). A writer killed at any point leaves a readable store in which the networks whose
flag is not set are listed by :meth:`ZooStore.incomplete` and skipped by the readers.

Consolidated metadata (one object holding every node's metadata, so that opening a store on
S3 is one request instead of a listing) is written by :meth:`ZooStore.consolidate` at the end.
A writer that starts a shard first drops the root's consolidated metadata, so a reader never
trusts a listing that misses a newer shard.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import xarray as xr
import zarr
from tqdm.auto import tqdm
from zarr.codecs import BloscCodec
from zarr.core.sync import sync as zarr_sync

from rulefinder.network_record import NetworkRecord
from rulefinder.vocabulary import METADATA_DEFAULTS
from rulefinder.store import location
from rulefinder.store.schema import (
    COUNT_FIELDS,
    LISTING_FIELDS,
    SCHEMA_VERSION,
    SHARDS_GROUP,
    STORE_KIND,
    activations_block,
    check_metadata,
    decode_aux,
    decode_recording,
    encode_shard,
)

log = logging.getLogger(__name__)

# "@" appears in task names with a parameter (synthetic@0.5), and so in shard ids.
_SHARD_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]*$")
# float16 activations compress best with byte shuffling ahead of zstd (sign/exponent bytes
# are far more regular than mantissa bytes).
_ACTIVATION_CODEC = BloscCodec(cname="zstd", clevel=1, shuffle="shuffle", typesize=2)


class StoreError(ValueError):
    """The store is of another kind or schema version, or a request cannot be met."""


class StoreNotFoundError(StoreError, FileNotFoundError):
    """No zoo store at the given location."""


@contextlib.contextmanager
def _quiet_consolidated():
    """zarr warns that consolidated metadata is not in the v3 spec; we know and chose it."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Cc]onsolidated metadata.*")
        yield


@contextlib.contextmanager
def _quiet_partial_writes():
    """A listing may meet a writer's temporary ``*.partial`` file (zarr writes local files
    atomically through one; a killed writer leaves it behind). Expected here, and harmless."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not recognized as a component of a Zarr")
        yield


def _as_str(values: Any) -> np.ndarray:
    return np.array([str(v) for v in np.asarray(values, dtype=object).ravel().tolist()], dtype=str).reshape(
        np.shape(values)
    )


def _empty(name: str, n: int) -> np.ndarray:
    """A column of ``n`` unknown values, typed like the real column."""
    if name in ("complete", "diverged", "learned"):  # stores before `learned`: False
        return np.zeros(n, dtype=bool)
    if name in METADATA_DEFAULTS:  # stores before the field: its default ("variant": "default")
        return np.array([METADATA_DEFAULTS[name]] * n, dtype=str)
    if name in COUNT_FIELDS:
        return np.zeros(n, dtype=np.int32)
    if name in ("seed", "index"):
        return np.full(n, -1, dtype=np.int64)
    if name in ("final_accuracy", "learned_threshold"):  # learned_threshold NaN: no bar known
        return np.full(n, np.nan)
    return np.full(n, "", dtype=str)


def _plain(values: np.ndarray) -> np.ndarray:
    """numpy's variable-width StringDType (what zarr returns) as plain unicode."""
    if values.dtype.kind in "OT":
        return np.array(values.tolist(), dtype=str).reshape(values.shape)
    return values


async def _write_small(
    group: zarr.Group, name: str, dims: tuple[str, ...], values: np.ndarray
) -> None:
    """One small array, created with its data in one go (a single chunk)."""
    if values.dtype == object:
        values = _as_str(values)
        dtype, fill = str, ""
    else:
        dtype = values.dtype
        fill = np.nan if values.dtype.kind == "f" else (False if values.dtype == bool else -1)
    arr = await group._async_group.create_array(
        name,
        shape=values.shape,
        chunks=values.shape,
        dtype=dtype,
        fill_value=fill,
        dimension_names=dims,
    )
    await arr.setitem(Ellipsis, values)


async def _write_all_small(group: zarr.Group, specs: list) -> None:
    await asyncio.gather(*(_write_small(group, *spec) for spec in specs))


class ZooStore:
    """The zoo's observables in a Zarr store (local path or fsspec URL).

    Create with :meth:`create`, open with :meth:`open`. Nothing but metadata is read on open;
    the per-network table is read on first use and the activations only network by network.
    """

    def __init__(
        self,
        url: str,
        root: zarr.Group,
        *,
        storage_options: dict | None = None,
        consolidated: bool | None = None,
    ) -> None:
        self.url = str(url)
        self._root = root
        self._storage_options = storage_options
        self._consolidated = consolidated
        self._table: xr.Dataset | None = None
        self._index: dict[str, tuple[str, int]] | None = None
        self._shard_cache: tuple[str, dict[str, np.ndarray]] | None = None

    # ---------------------------------------------------------------- opening
    @classmethod
    def create(
        cls, url: str, *, storage_options: dict | None = None, exist_ok: bool = False
    ) -> ZooStore:
        """Make an empty store (root group with ``schema_version``, and the shard group).

        ``exist_ok=True`` opens an existing zoo store instead (so every writer of a pipeline
        may call ``create``; one of them makes it).
        """
        if exist_ok and location.read_root_json(url, storage_options) is not None:
            return cls.open(url, mode="r+", storage_options=storage_options)
        store = location.zarr_store(url, storage_options=storage_options)
        try:
            root = zarr.open_group(
                store,
                mode="w-",
                zarr_format=3,
                attributes={"schema_version": SCHEMA_VERSION, "kind": STORE_KIND},
            )
        except FileExistsError as exc:
            if exist_ok:  # another process made it between our check and our create
                return cls.open(url, mode="r+", storage_options=storage_options)
            raise StoreError(f"{url}: a store exists here (exist_ok=True to open it)") from exc
        root.create_group(SHARDS_GROUP)
        log.info("created zoo store %s (schema version %d)", url, SCHEMA_VERSION)
        return cls(url, root, storage_options=storage_options, consolidated=False)

    @classmethod
    def open(
        cls,
        url: str,
        *,
        mode: str = "r",
        storage_options: dict | None = None,
        consolidated: bool | None = None,
    ) -> ZooStore:
        """Open lazily. ``consolidated=None`` uses consolidated metadata when it is there."""
        if mode not in ("r", "r+"):
            raise ValueError(f"mode {mode!r}: expected 'r' or 'r+'")
        store = location.zarr_store(url, read_only=mode == "r", storage_options=storage_options)
        try:
            with _quiet_consolidated():
                root = zarr.open_group(store, mode=mode, use_consolidated=consolidated)
        except (FileNotFoundError, zarr.errors.GroupNotFoundError) as exc:
            raise StoreNotFoundError(f"{url}: no zoo store here ({exc})") from exc
        kind = root.attrs.get("kind")
        version = root.attrs.get("schema_version")
        if kind != STORE_KIND:
            raise StoreError(f"{url}: attribute kind is {kind!r}: expected {STORE_KIND!r}")
        if version != SCHEMA_VERSION:
            raise StoreError(
                f"{url}: schema_version is {version!r}: this rulefinder reads {SCHEMA_VERSION}"
            )
        is_consolidated = root.metadata.consolidated_metadata is not None
        return cls(url, root, storage_options=storage_options, consolidated=is_consolidated)

    @property
    def schema_version(self) -> int:
        return int(self._root.attrs["schema_version"])

    @property
    def is_consolidated(self) -> bool:
        return bool(self._consolidated)

    def shard_ids(self) -> list[str]:
        if SHARDS_GROUP not in self._root:
            return []
        with _quiet_partial_writes():
            return sorted(name for name, _ in self._root[SHARDS_GROUP].groups())

    def refresh(self) -> ZooStore:
        """A fresh view of the store (shards written since opening become visible)."""
        return ZooStore.open(
            self.url,
            mode="r" if self._root.read_only else "r+",
            storage_options=self._storage_options,
        )

    # ---------------------------------------------------------------- writing
    def _drop_consolidated(self) -> None:
        doc = location.read_root_json(self.url, self._storage_options)
        if doc is not None and doc.get("consolidated_metadata") is not None:
            doc.pop("consolidated_metadata")
            location.write_root_json(self.url, doc, self._storage_options)
            log.info("%s: consolidated metadata dropped while shards are written", self.url)
        store = location.zarr_store(self.url, storage_options=self._storage_options)
        self._root = zarr.open_group(store, mode="r+", use_consolidated=False)
        self._consolidated = False

    def write_shard(
        self,
        records: Sequence[NetworkRecord],
        shard_id: str,
        *,
        overwrite: bool = False,
        on_network: Callable[[int, str], None] | None = None,
        progress: bool | None = None,
        write_batch: int = 8,
    ) -> list[str]:
        """Write ``records`` as shard ``shard_id``; return their network ids.

        The caller gives every concurrent writer its own ``shard_id`` (e.g. the pipeline's task
        index); that is the only coordination needed. Activations go down ``write_batch``
        networks at a time (their chunks written concurrently), then those networks'
        ``complete`` flags; ``on_network(i, network_id)`` is called after network ``i`` is
        complete (for progress reports).
        """
        if self._root.read_only:
            raise StoreError(f"{self.url}: opened read-only; open with mode='r+' to write")
        if not _SHARD_ID.match(shard_id):
            raise ValueError(f"shard id {shard_id!r}: expected letters, digits, '_', '.', '@', '-'")
        records = list(records)
        if not records:
            raise ValueError(f"shard {shard_id}: no records to write")
        ids = [r.network_id for r in records]
        if len(set(ids)) != len(ids):
            dup = sorted({i for i in ids if ids.count(i) > 1})
            raise ValueError(f"shard {shard_id}: network ids repeated within the shard: {dup[:5]}")
        for r in records:
            check_metadata(r)

        self._drop_consolidated()
        path = f"{SHARDS_GROUP}/{shard_id}"
        if path in self._root and not overwrite:
            raise StoreError(f"{self.url}: shard {shard_id} exists (overwrite=True to replace)")
        enc = encode_shard(records)
        n = len(records)
        t0 = time.perf_counter()
        group = self._root.create_group(
            path,
            overwrite=True,
            attributes={
                "schema_version": SCHEMA_VERSION,
                "shard_id": shard_id,
                "network_ids": ids,
                "weight_stats": enc.weight_stat_names,
                "networks": enc.listing,
            },
        )
        complete = group.create_array(
            "complete", shape=(n,), chunks=(1,), dtype=bool, fill_value=False,
            dimension_names=("network",),
        )
        small = [(name, ("network",), values) for name, values in enc.table.items()]
        small += [(name, dims, values) for name, (dims, values) in enc.bulk.items()]
        small.append(
            ("weight_stat", ("weight_stat",), np.array(enc.weight_stat_names or ["none"], dtype=object))
        )
        # Some forty small arrays: made concurrently, each one object write, not one by one.
        zarr_sync(_write_all_small(group, small))
        s = enc.sizes
        acts = group.create_array(
            "activations",
            shape=(n, s["checkpoint"], s["stimulus_slot"], s["unit_slot"]),
            chunks=(1, s["checkpoint"], s["stimulus_slot"], s["unit_slot"]),
            dtype=np.float16,
            fill_value=np.nan,
            compressors=[_ACTIVATION_CODEC],
            dimension_names=("network", "checkpoint", "stimulus_slot", "unit_slot"),
        )
        show = progress if progress is not None else sys.stderr.isatty()
        batch = max(1, int(write_batch))
        with tqdm(total=n, desc=f"shard {shard_id}", unit="net", disable=not show) as bar:
            for start in range(0, n, batch):
                stop = min(n, start + batch)
                # zarr writes the batch's chunks concurrently; flags only after all are down.
                exponents = enc.bulk["activation_exponent"][1]
                acts[start:stop] = np.concatenate(
                    [activations_block(records[i], s, int(exponents[i])) for i in range(start, stop)]
                )
                complete[start:stop] = True
                bar.update(stop - start)
                if on_network is not None:
                    for i in range(start, stop):
                        on_network(i, records[i].network_id)
        self._table = None
        self._index = None
        log.info(
            "%s: wrote shard %s (%d networks) in %.2f s",
            self.url, shard_id, n, time.perf_counter() - t0,
        )
        return ids

    def consolidate(self) -> None:
        """Write consolidated metadata (call once, after the last writer has finished)."""
        store = location.zarr_store(self.url, storage_options=self._storage_options)
        with _quiet_consolidated(), _quiet_partial_writes():
            zarr.consolidate_metadata(store)
            self._root = zarr.open_group(store, mode="r+", use_consolidated=True)
        self._consolidated = True
        log.info("%s: consolidated metadata written", self.url)

    # ---------------------------------------------------------------- reading
    def _shard_table(self, shard_id: str) -> dict[str, np.ndarray]:
        """A shard's listing (from its group attributes) and its ``complete`` flags.

        A flag that cannot be read (a writer died before making the array) counts as False.
        """
        group = self._root[f"{SHARDS_GROUP}/{shard_id}"]
        ids = [str(i) for i in group.attrs.get("network_ids", [])]
        n = len(ids)
        listing = group.attrs.get("networks", {})
        out: dict[str, np.ndarray] = {}
        for name in LISTING_FIELDS:
            values = listing.get(name)
            if values is None or len(values) != n:
                out[name] = _empty(name, n)
            elif name in ("final_accuracy", "learned_threshold"):
                out[name] = np.array([np.nan if v is None else v for v in values], dtype=np.float64)
            else:
                kind = _empty(name, 0).dtype
                out[name] = np.asarray(values, dtype=str if kind.kind == "U" else kind)
        out["network_id"] = np.array(ids, dtype=str)
        try:
            out["complete"] = np.asarray(group["complete"][:], dtype=bool)
        except Exception as exc:  # the writer died before the flags existed
            log.warning("%s: shard %s has no readable completeness (%s)", self.url, shard_id, exc)
            out["complete"] = np.zeros(n, dtype=bool)
        return out

    def networks(self) -> xr.Dataset:
        """Per-network table over dim ``network`` (coordinate = network id).

        Variables: ``shard``, ``index`` (position in the shard), ``complete``, the metadata
        strings (``rule``, ``family``, ``variant``, ``optimizer``, ``architecture``,
        ``arch_family``, ``task``), ``seed``, ``hyperparameters`` (JSON), ``diverged``,
        ``learned`` and ``learned_threshold`` (docs/store.md; NaN where no bar is known, so
        ``learned`` False there says nothing), the ``n_*`` counts and ``final_accuracy``. Incomplete networks are listed too (``complete`` False). Reads
        group metadata and the ``complete`` flags only.
        """
        if self._table is not None:
            return self._table
        names = ["shard", "index", "complete", *LISTING_FIELDS]
        cols = {name: [_empty(name, 0)] for name in names}
        for shard_id in self.shard_ids():
            table = self._shard_table(shard_id)
            n = table["network_id"].size
            table["shard"] = np.full(n, shard_id, dtype=object).astype(str)
            table["index"] = np.arange(n, dtype=np.int64)
            for name in names:
                cols[name].append(table[name])
        merged = {name: np.concatenate(parts) for name, parts in cols.items()}
        ids = merged.pop("network_id")
        unique, counts = np.unique(ids, return_counts=True)
        if (counts > 1).any():
            log.warning(
                "%s: network ids in more than one shard: %s",
                self.url,
                unique[counts > 1][:5].tolist(),
            )
        self._table = xr.Dataset(
            {k: ("network", v) for k, v in merged.items()},
            coords={"network": ids},
            attrs={"schema_version": self.schema_version, "url": self.url},
        )
        self._index = {}
        for nid, shard, idx in zip(
            ids.tolist(), merged["shard"].tolist(), merged["index"].tolist(), strict=True
        ):
            self._index.setdefault(nid, (shard, int(idx)))
        return self._table

    def incomplete(self) -> list[str]:
        """Network ids whose writer did not finish them (a crash, or a writer still running)."""
        table = self.networks()
        return [str(i) for i in table["network"].values[~table["complete"].values]]

    def complete_shards(self) -> set[str]:
        """Shard ids whose every network is complete: the one resume rule.

        A shard counts as done only when its writer set the ``complete`` flag of every network
        it listed; a shard left half-written by a killed writer is not, and is trained again
        (and overwritten) by ``python -m training_zoo run --resume`` and by the Ray pipeline
        alike. Reads each shard's listing and flags afresh (never the cached table), so a scan
        sees what other writers have finished since this store was opened.
        """
        done: set[str] = set()
        fresh = self.refresh()
        for shard_id in fresh.shard_ids():
            flags = fresh._shard_table(shard_id)["complete"]
            if flags.size and bool(flags.all()):
                done.add(shard_id)
        return done

    def _locate(self, network_id: str) -> tuple[str, int]:
        self.networks()
        assert self._index is not None
        if network_id not in self._index:
            raise KeyError(f"{self.url}: no network {network_id!r}")
        shard, i = self._index[network_id]
        if not bool(self._table["complete"].sel(network=network_id).values.ravel()[0]):
            raise StoreError(f"{self.url}: network {network_id} is incomplete (its writer did not finish)")
        return shard, i

    def _small_arrays(self, shard_id: str) -> dict[str, np.ndarray]:
        # One shard's small arrays at a time: iterating a shard reads them once.
        if self._shard_cache is not None and self._shard_cache[0] == shard_id:
            return self._shard_cache[1]
        group = self._root[f"{SHARDS_GROUP}/{shard_id}"]
        with _quiet_partial_writes():
            members = list(group.arrays())
        arrays = {
            name: _plain(np.asarray(arr[...]))
            for name, arr in members
            if name not in ("activations", "complete")
        }
        self._shard_cache = (shard_id, arrays)
        return arrays

    def _row(self, shard_id: str, i: int) -> dict[str, Any]:
        arrays = self._small_arrays(shard_id)
        return {k: (v[i] if v.ndim and k != "weight_stat" else v) for k, v in arrays.items()}

    def recording(self, network_id: str) -> xr.DataArray:
        """The network as a recording (checkpoints = sessions, layers = areas), float16 values."""
        shard, i = self._locate(network_id)
        acts = self._root[f"{SHARDS_GROUP}/{shard}/activations"][i]
        return decode_recording(acts, self._row(shard, i), source=f"{self.url}#{network_id}")

    def record(self, network_id: str) -> NetworkRecord:
        """Everything stored about one network, as the ``NetworkRecord`` the zoo wrote."""
        shard, i = self._locate(network_id)
        row = self._row(shard, i)
        rec = self.recording(network_id)
        stat_names = [str(s) for s in row["weight_stat"].tolist()]
        aux = decode_aux(row, stat_names)
        return NetworkRecord(
            network_id=network_id,
            recording=rec,
            metadata=json.loads(str(row["metadata_json"])),
            weight_stats=aux["weight_stats"],
            activity_change=aux["activity_change"],
            train_loss=aux["train_loss"],
            diverged=bool(row["diverged"]),
            extras=json.loads(str(row["extras_json"]) or "{}"),
        )

    def select(
        self,
        *,
        include_incomplete: bool = False,
        include_diverged: bool = False,
        **equals: str | Sequence[str],
    ) -> list[str]:
        """Network ids whose metadata match, e.g. ``select(rule="backprop", task=["mnist"])``."""
        table = self.networks()
        keep = np.ones(table.sizes["network"], dtype=bool)
        if not include_incomplete:
            keep &= table["complete"].values
        if not include_diverged:
            keep &= ~table["diverged"].values
        for key, wanted in equals.items():
            if key not in table:
                raise KeyError(f"no metadata field {key!r}: expected one of {list(table.data_vars)}")
            wanted = [wanted] if isinstance(wanted, (str, int)) else list(wanted)
            keep &= np.isin(table[key].values, np.asarray(wanted))
        return [str(i) for i in table["network"].values[keep]]

    def iter_recordings(
        self, *, include_diverged: bool = False, **equals: str | Sequence[str]
    ) -> Iterator[tuple[str, xr.DataArray]]:
        """``(network_id, recording)`` for every complete network matching ``equals``."""
        for network_id in self.select(include_diverged=include_diverged, **equals):
            yield network_id, self.recording(network_id)

    def dataset(self, shard_id: str) -> xr.Dataset:
        """One shard as a lazy ``xarray.Dataset`` (nothing is read until values are asked for)."""
        store = location.zarr_store(self.url, read_only=True, storage_options=self._storage_options)
        with _quiet_consolidated():
            return xr.open_zarr(
                store,
                group=f"{SHARDS_GROUP}/{shard_id}",
                consolidated=bool(self._consolidated),
                chunks=None,
                mask_and_scale=False,
                zarr_format=3,
            )
