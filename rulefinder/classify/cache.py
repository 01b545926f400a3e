"""Area feature rows of zoo networks, computed once and kept on disk.

Evaluation fits dozens of models on the same networks; featurising a network costs far more
than fitting on its row, so the plain recording's rows are cached per network as ``.npz``
(plain arrays, ``allow_pickle=False``) under ``cache_dir/<feature key>/``, where the key names
the feature set and grid, so a changed feature set never reads stale rows.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import xarray as xr
from tqdm.auto import tqdm

from rulefinder.classify.features import area_feature_names, area_feature_rows

_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def feature_key(n_times: int, feature_set: str) -> str:
    names = area_feature_names(n_times, feature_set)
    digest = hashlib.sha256("\n".join(names).encode()).hexdigest()[:12]
    return f"{feature_set.replace('+', '-')}-t{n_times}-{digest}"


def _path(root: Path, network: str) -> Path:
    return root / (_SAFE.sub("_", network) + ".npz")


def concat_rows(parts: Sequence[xr.DataArray]) -> xr.DataArray:
    """Rows of several recordings, renumbered so ``recording`` is the position in ``parts``.
    One numpy concatenation per coordinate: ``xr.concat`` over tens of thousands of small
    arrays takes minutes."""
    if not parts:
        raise ValueError("concat_rows: no rows given")
    first = parts[0]
    sizes = [p.sizes["sample"] for p in parts]
    coords = {"feature": first.coords["feature"].values,
              "recording": ("sample", np.repeat(np.arange(len(parts)), sizes))}
    for name in ("area", "depth", "depth_known", "units"):
        if name in first.coords:
            coords[name] = ("sample", np.concatenate([p.coords[name].values for p in parts]))
    return xr.DataArray(np.concatenate([p.values for p in parts], axis=0), dims=("sample", "feature"),
                        coords=coords, name=first.name)


def rows_dir(cache_dir: str | Path, n_times: int, feature_set: str) -> Path:
    """The cache folder for one feature set and grid (created)."""
    root = Path(cache_dir) / feature_key(n_times, feature_set)
    root.mkdir(parents=True, exist_ok=True)
    return root


def load_rows(root: Path, key: str, names: Sequence[str]) -> xr.DataArray | None:
    """The cached rows stored under ``key`` (a network id, or any name), or None."""
    path = _path(root, key)
    if not path.exists():
        return None
    with np.load(path, allow_pickle=False) as z:
        return xr.DataArray(
            z["data"],
            dims=("sample", "feature"),
            coords={
                "feature": list(names),
                "recording": ("sample", np.zeros(z["data"].shape[0], dtype=int)),
                "area": ("sample", z["area"]),
                "depth": ("sample", z["depth"]),
                "depth_known": ("sample", z["depth_known"]),
                "units": ("sample", z["units"]),
            },
        )


def save_rows(root: Path, key: str, part: xr.DataArray) -> None:
    """Store one recording's rows under ``key``, atomically (a reader never sees half a file)."""
    path = _path(root, key)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(
        tmp,
        data=part.values,
        area=part.coords["area"].values.astype(str),
        depth=part.coords["depth"].values,
        depth_known=part.coords["depth_known"].values,
        units=part.coords["units"].values,
    )
    tmp.replace(path)


def network_rows(
    store,
    networks: Sequence[str],
    n_times: int = 8,
    feature_set: str = "stats+change",
    cache_dir: str | Path | None = None,
    progress: bool = False,
) -> xr.DataArray:
    """Area rows of the plain recordings of ``networks`` (``recording`` = position in
    ``networks``), read from / written to ``cache_dir`` when given."""
    names = area_feature_names(n_times, feature_set)
    root = rows_dir(cache_dir, n_times, feature_set) if cache_dir else None
    parts = []
    for nid in tqdm(list(networks), desc="features", unit="network", disable=not progress):
        part = load_rows(root, nid, names) if root else None
        if part is None:
            part = area_feature_rows([store.recording(nid)], n_times=n_times, feature_set=feature_set)
            if root is not None:
                save_rows(root, nid, part)
        parts.append(part)
    return concat_rows(parts)
