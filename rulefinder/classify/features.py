"""Area rows for the rule classifiers: one feature row per (recording, area).

Feature sets (``feature_set``, ``+``-joined):

* ``stats``: every statistic of :mod:`rulefinder.features` as a trajectory over the canonical
  relative-time grid (``<stat>@t<time>``);
* ``change``: each trajectory minus its first point (``d_<stat>@t<time>``, times after 0):
  how the area changes rather than what it is;
* ``structure``: change-structure features of :mod:`rulefinder.classify.structure` (how the
  area's change relates to the output's and the next area's);
* always: ``depth`` (0 input side .. 1 output side) and ``depth_known``.

All are invariant to unit order, stimulus order and the recording's scale (the statistics are).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import xarray as xr

from rulefinder.features import STAT_NAMES, canonical_grid, recording_features
from rulefinder.classify.structure import structure_feature_names, structure_features
from rulefinder.features.extractor import _one_blas_thread

FEATURE_SETS: tuple[str, ...] = ("stats", "change", "structure")


def _parse(feature_set: str) -> list[str]:
    parts = [p for p in feature_set.split("+") if p]
    bad = [p for p in parts if p not in FEATURE_SETS]
    if bad or not parts:
        raise ValueError(f"feature_set is {feature_set!r}: expected '+'-joined parts of {list(FEATURE_SETS)}")
    return parts


def area_feature_names(n_times: int, feature_set: str) -> list[str]:
    parts = _parse(feature_set)
    grid = canonical_grid(n_times)
    names: list[str] = []
    if "stats" in parts:
        names += [f"{s}@t{g:.2f}" for s in STAT_NAMES for g in grid]
    if "change" in parts:
        names += [f"d_{s}@t{g:.2f}" for s in STAT_NAMES for g in grid[1:]]
    if "structure" in parts:
        names += structure_feature_names()
    return names + ["depth", "depth_known"]


def _rows(feats: xr.DataArray, parts: list[str], rec: xr.DataArray) -> np.ndarray:
    """``(area, stat, time)`` (+ the recording for ``structure``) -> ``(area, feature)``."""
    f = feats.transpose("area", "stat", "time").values
    cols = []
    if "stats" in parts:
        cols.append(f.reshape(f.shape[0], -1))
    if "change" in parts:
        cols.append((f[:, :, 1:] - f[:, :, :1]).reshape(f.shape[0], -1))
    if "structure" in parts:
        cols.append(structure_features(rec))
    depth = feats.coords["depth"].values[:, None]
    known = feats.coords["depth_known"].values[:, None]
    return np.concatenate([*cols, depth, known], axis=1)


def area_feature_rows(recordings: Sequence[xr.DataArray], n_times: int = 8, feature_set: str = "stats+change") -> xr.DataArray:
    """Rows ``(sample, feature)``; sample coords ``recording`` (position in ``recordings``),
    ``area``, ``depth``, ``depth_known`` and ``units`` (units recorded in the area)."""
    parts = _parse(feature_set)
    names = area_feature_names(n_times, feature_set)
    blocks, rec_idx, areas, depth, known, units = [], [], [], [], [], []
    with _one_blas_thread():
        for i, rec in enumerate(recordings):
            feats = recording_features(rec, n_times)
            blocks.append(_rows(feats, parts, rec))
            area_names = [str(a) for a in feats.coords["area"].values]
            ua = np.asarray(rec.coords["unit_area"].values).astype(str)
            rec_idx += [i] * len(area_names)
            areas += area_names
            depth += feats.coords["depth"].values.tolist()
            known += feats.coords["depth_known"].values.tolist()
            units += [int((ua == a).sum()) for a in area_names]
    data = np.concatenate(blocks, axis=0) if blocks else np.empty((0, len(names)))
    return xr.DataArray(
        data,
        dims=("sample", "feature"),
        coords={
            "feature": names,
            "recording": ("sample", np.asarray(rec_idx, dtype=int)),
            "area": ("sample", np.asarray(areas, dtype=str)),
            "depth": ("sample", np.asarray(depth, dtype=np.float64)),
            "depth_known": ("sample", np.asarray(known, dtype=np.float64)),
            "units": ("sample", np.asarray(units, dtype=int)),
        },
        name="area_features",
    )
