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
    """Rows of several recordings, renumbered so ``recording`` is the position in ``parts``."""
    fixed = []
    for i, p in enumerate(parts):
        fixed.append(p.assign_coords(recording=("sample", np.full(p.sizes["sample"], i, dtype=int))))
    return xr.concat(fixed, dim="sample")


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
    root = Path(cache_dir) / feature_key(n_times, feature_set) if cache_dir else None
    if root:
        root.mkdir(parents=True, exist_ok=True)
    parts = []
    for nid in tqdm(list(networks), desc="features", unit="network", disable=not progress):
        path = _path(root, nid) if root else None
        if path is not None and path.exists():
            with np.load(path, allow_pickle=False) as z:
                part = xr.DataArray(
                    z["data"],
                    dims=("sample", "feature"),
                    coords={
                        "feature": names,
                        "recording": ("sample", np.zeros(z["data"].shape[0], dtype=int)),
                        "area": ("sample", z["area"]),
                        "depth": ("sample", z["depth"]),
                        "depth_known": ("sample", z["depth_known"]),
                        "units": ("sample", z["units"]),
                    },
                )
        else:
            part = area_feature_rows([store.recording(nid)], n_times=n_times, feature_set=feature_set)
            if path is not None:
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
        parts.append(part)
    return concat_rows(parts)
