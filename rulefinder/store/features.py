"""Feature tables in the zoo store: ``features/<shard_id>``, dims ``(sample, feature)``.

The pipeline's features stage writes one group per zoo shard, next to ``shards/``, so the
stage resumes like training does: a group whose ``complete`` attribute is set (written last,
after every array) and whose ``fingerprint`` matches the stage's settings is not computed
again. One writer per group, as for shards, so parallel writers need no lock.

Layout: one float32 array ``features`` (dims ``sample, feature``) and, in the group's JSON
attributes, the feature names and the sample coordinates. A sample is one area of one
recording; sample coordinates say where it came from:
``recording`` (index of the recording within the group; :func:`read_features` renumbers
them into one running index), ``network`` (the zoo network id), ``virtual`` (the virtual
experiment's JSON spec, ``""`` for the network as recorded), ``area``, ``depth``, and the
labels of the recording (``rule``, ``family``, ``optimizer``, ``variant``, ``task``,
``arch_family``, ``shard``, ``learned``, ...). Values are float32.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterable

import numpy as np
import xarray as xr
import zarr
import zarr.errors

from rulefinder.store import location

log = logging.getLogger(__name__)

FEATURES_GROUP = "features"


@contextlib.contextmanager
def _quiet():
    # zarr v3 warns about consolidated metadata and fixed-width strings; both are intended.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Cc]onsolidated metadata.*")
        warnings.filterwarnings("ignore", category=UserWarning, module="zarr.*")
        warnings.filterwarnings("ignore", category=FutureWarning, module="zarr.*")
        warnings.filterwarnings("ignore", message=".*not recognized as a component of a Zarr")
        yield


def _features_store(url: str, storage_options: dict | None, read_only: bool):
    """A Zarr store rooted at ``<url>/features``.

    Never through the store's root: after training, the root ``zarr.json`` carries the
    consolidated metadata of every shard (20 MB for the 1,296-network ``default`` zoo), and
    zarr reads and parses it on every open and again on every group or array created under
    it: 1.2 CPU-seconds per feature group, more than computing the group's features.
    """
    return location.zarr_store(f"{str(url).rstrip('/')}/{FEATURES_GROUP}", read_only=read_only,
                               storage_options=storage_options)


def _features_root(url: str, storage_options: dict | None) -> zarr.Group | None:
    """The ``features`` group, read-only; ``None`` when no feature group was ever written."""
    store = _features_store(url, storage_options, read_only=True)
    with _quiet():
        try:
            return zarr.open_group(store, mode="r", use_consolidated=False)
        except (FileNotFoundError, zarr.errors.GroupNotFoundError):
            return None


def ensure_features_group(url: str, *, storage_options: dict | None = None) -> None:
    """Create ``features/`` (the driver does this once, before its writers start)."""
    store = _features_store(url, storage_options, read_only=False)
    with _quiet():
        zarr.open_group(store, mode="a", use_consolidated=False)


def _coord_json(values: np.ndarray) -> list:
    values = np.asarray(values)
    if values.dtype.kind in "OUT":
        return [str(v) for v in values.tolist()]
    if values.dtype.kind == "f":
        return [None if not np.isfinite(v) else float(v) for v in values.tolist()]
    return values.tolist()


def write_features(
    url: str,
    key: str,
    features: xr.DataArray,
    *,
    fingerprint: str,
    storage_options: dict | None = None,
) -> None:
    """Write ``features`` (dims ``sample, feature``) as group ``features/<key>``, then mark it
    complete. Replaces an older group of the same key.

    One Zarr array ``features`` (float32, dims ``sample, feature``) plus the sample and feature
    coordinates as JSON attributes of the group: a shard's coordinates are a few kB, and one
    array is one object to write instead of some twenty (xarray's ``to_zarr`` makes an array
    per coordinate, which cost seconds per shard on a busy machine).
    """
    if tuple(features.dims) != ("sample", "feature"):
        raise ValueError(f"features for {key}: dims {features.dims}: expected ('sample', 'feature')")
    missing = [c for c in ("network", "virtual", "area") if c not in features.coords]
    if missing:
        raise ValueError(f"features for {key}: sample coordinates {missing} missing")
    coords, kinds = {}, {}
    for name, coord in features.coords.items():
        if name == "feature":
            continue
        if coord.dims != ("sample",):
            raise ValueError(f"features for {key}: coordinate {name} has dims {coord.dims}: expected ('sample',)")
        coords[name] = _coord_json(coord.values)
        kinds[name] = np.asarray(coord.values).dtype.kind
    feature_names = [str(f) for f in features.coords["feature"].values] if "feature" in features.coords else []
    values = np.asarray(features.values, dtype=np.float32)
    store = _features_store(url, storage_options, read_only=False)
    with _quiet():
        root = zarr.open_group(store, mode="a", use_consolidated=False)
        group = root.create_group(
            key, overwrite=True,
            attributes={"fingerprint": fingerprint, "complete": False, "shard_id": key},
        )
        arr = group.create_array(
            "features", shape=values.shape, chunks=(max(values.shape[0], 1), max(values.shape[1], 1)),
            dtype=np.float32, fill_value=np.nan, dimension_names=("sample", "feature"),
        )
        if values.size:
            arr[...] = values
        # The flag goes with the coordinates, last: a writer killed before it leaves a group
        # that is computed again.
        group.attrs.update({"feature": feature_names, "coords": coords, "coord_kinds": kinds, "complete": True})


def feature_keys(url: str, *, storage_options: dict | None = None) -> list[str]:
    """Every feature group's key, complete or not."""
    root = _features_root(url, storage_options)
    if root is None:
        return []
    with _quiet():
        return sorted(name for name, _ in root.groups())


def complete_features(url: str, fingerprint: str | None = None, *, storage_options: dict | None = None) -> set[str]:
    """Keys of feature groups that are complete (and, if given, made with ``fingerprint``)."""
    root = _features_root(url, storage_options)
    if root is None:
        return set()
    done = set()
    with _quiet():
        for key, group in root.groups():
            attrs = group.attrs
            if attrs.get("complete") and (fingerprint is None or attrs.get("fingerprint") == fingerprint):
                done.add(key)
    return done


def read_features(
    url: str, keys: Iterable[str] | None = None, *, storage_options: dict | None = None
) -> xr.DataArray:
    """The complete feature groups (or ``keys``) concatenated over ``sample``, loaded."""
    keys = sorted(complete_features(url, storage_options=storage_options)) if keys is None else list(keys)
    root = _features_root(url, storage_options) if keys else None
    if root is None:
        raise FileNotFoundError(f"{url}: no complete feature groups under {FEATURES_GROUP}/")
    parts = []
    offset = 0
    with _quiet():
        for key in keys:
            group = root[key]
            part = _as_dataarray(group)
            if "recording" in part.coords and part.sizes["sample"]:
                # Each group numbers its recordings from 0; renumber into one running index.
                local = np.asarray(part.coords["recording"].values, dtype=int)
                part = part.assign_coords(recording=("sample", local + offset))
                offset += int(local.max()) + 1
            if part.sizes["sample"]:
                parts.append(part)
    if not parts:
        raise FileNotFoundError(f"{url}: the feature groups {keys[:3]}... hold no samples")
    return xr.concat(parts, dim="sample") if len(parts) > 1 else parts[0]


def _as_dataarray(group: zarr.Group) -> xr.DataArray:
    attrs = group.attrs
    values = np.asarray(group["features"][...], dtype=np.float32)
    coords: dict = {"feature": list(attrs.get("feature", []))}
    kinds = attrs.get("coord_kinds", {})
    for name, col in attrs.get("coords", {}).items():
        kind = kinds.get(name, "U")
        if kind == "f":
            arr = np.array([np.nan if v is None else v for v in col], dtype=np.float64)
        elif kind == "b":
            arr = np.array(col, dtype=bool)
        elif kind in "iu":
            arr = np.array(col, dtype=np.int64)
        else:
            arr = np.array(col, dtype=str)
        coords[name] = ("sample", arr)
    if not coords["feature"]:
        coords.pop("feature")
    return xr.DataArray(values, dims=("sample", "feature"), coords=coords, name="features")
