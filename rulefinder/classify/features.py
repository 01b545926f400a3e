"""Area rows for the rule classifiers: one feature row per (recording, area).

Feature sets (``feature_set``, ``+``-joined):

* ``stats``: every statistic of :mod:`rulefinder.features` as a trajectory over the canonical
  relative-time grid (``<stat>@t<time>``);
* ``change``: each trajectory minus its first point (``d_<stat>@t<time>``, times after 0):
  how the area changes rather than what it is;
* ``structure``: change-structure features of :mod:`rulefinder.classify.structure` (how the
  area's change relates to the output's and the next area's);
* ``progress``: the statistics read on the recording's activity clock instead of relative
  time, and their change (``P_*``, ``dP_*``; :mod:`rulefinder.classify.dynamics`);
* ``spread``: how change is distributed over units and stimuli (``U_*``; same module);
* always: ``depth`` (0 input side .. 1 output side) and ``depth_known``.

All are invariant to unit order, stimulus order and the recording's scale (the statistics are).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import xarray as xr

from rulefinder.classify.dynamics import (
    activity_clock,
    progress_feature_names,
    progress_features,
    progress_sessions,
    spread_feature_names,
    spread_features,
    unit_rms,
)
from rulefinder.classify.structure import structure_feature_names, structure_features_arrays
from rulefinder.features import STAT_NAMES, canonical_grid
from rulefinder.features.resample import relative_time
from rulefinder.features.extractor import RecordingArrays, _area_columns, _one_blas_thread
from rulefinder.recording.model import validate_recording

FEATURE_SETS: tuple[str, ...] = ("stats", "change", "structure", "progress", "spread")


def _parse(feature_set: str) -> list[str]:
    parts = [p for p in feature_set.split("+") if p]
    bad = [p for p in parts if p not in FEATURE_SETS]
    if bad or not parts:
        raise ValueError(f"feature_set is {feature_set!r}: expected '+'-joined parts of {list(FEATURE_SETS)}")
    return parts


def area_feature_names(n_times: int, feature_set: str) -> list[str]:
    return list(_feature_names(n_times, feature_set))


@functools.lru_cache(maxsize=32)
def _feature_names(n_times: int, feature_set: str) -> tuple[str, ...]:
    # Thousands of formatted names: built once, not for every recording predicted.
    parts = _parse(feature_set)
    grid = canonical_grid(n_times)
    names: list[str] = []
    if "stats" in parts:
        names += [f"{s}@t{g:.2f}" for s in STAT_NAMES for g in grid]
    if "change" in parts:
        names += [f"d_{s}@t{g:.2f}" for s in STAT_NAMES for g in grid[1:]]
    if "structure" in parts:
        names += structure_feature_names()
    if "progress" in parts:
        names += progress_feature_names(STAT_NAMES, n_times)
    if "spread" in parts:
        names += spread_feature_names()
    return (*names, "depth", "depth_known")


def _rows(arrays: RecordingArrays, parts: list[str], n_times: int) -> np.ndarray:
    """One valid recording's arrays -> ``(area, feature)``."""
    cols = []
    blocks = clock = per_session = None
    if "progress" in parts or "spread" in parts:
        values = np.asarray(arrays.values, dtype=np.float64)
        blocks = [unit_rms(values[:, :, c]) for c in _area_columns(arrays.unit_area, arrays.areas)]
    if "progress" in parts:
        clock = activity_clock(blocks, relative_time(arrays.session_time), scaled=True)
    if "stats" in parts or "change" in parts or "progress" in parts:
        # One pass of the statistics serves the time grid and the clock levels.
        extra = progress_sessions(clock, n_times) if clock is not None else None
        f, per_session = arrays.features_and_statistics(n_times, extra)  # (area, stat, time)
        if "stats" in parts:
            cols.append(f.reshape(f.shape[0], -1))
        if "change" in parts:
            cols.append((f[:, :, 1:] - f[:, :, :1]).reshape(f.shape[0], -1))
    if "structure" in parts:
        cols.append(
            structure_features_arrays(arrays.values, arrays.unit_area, arrays.areas, arrays.area_order, arrays.session_time)
        )
    if "progress" in parts:
        cols.append(progress_features(per_session, clock, n_times))
    if "spread" in parts:
        cols.append(np.stack([spread_features(b, scaled=True) for b in blocks]))
    depth, known = arrays.depths()
    return np.concatenate([*cols, depth[:, None], np.full((len(depth), 1), float(known))], axis=1)


def area_feature_rows(
    recordings: Sequence[xr.DataArray], n_times: int = 8, feature_set: str = "stats+change", validated: bool = False
) -> xr.DataArray:
    """Rows ``(sample, feature)``; sample coords ``recording`` (position in ``recordings``),
    ``area``, ``depth``, ``depth_known`` and ``units`` (units recorded in the area).
    ``validated``: the recordings are ``validate_recording``'s output already (not checked again)."""
    parts = _parse(feature_set)
    names = area_feature_names(n_times, feature_set)
    blocks, rec_idx, areas, units = [], [], [], []
    with _one_blas_thread():
        for i, rec in enumerate(recordings):
            arrays = RecordingArrays.of(rec if validated else validate_recording(rec))
            blocks.append(_rows(arrays, parts, n_times))
            rec_idx += [i] * len(arrays.areas)
            areas += arrays.areas
            units += arrays.units()
    data = np.concatenate(blocks, axis=0) if blocks else np.empty((0, len(names)))
    return xr.DataArray(
        data,
        dims=("sample", "feature"),
        coords={
            "feature": names,
            "recording": ("sample", np.asarray(rec_idx, dtype=int)),
            "area": ("sample", np.asarray(areas, dtype=str)),
            "depth": ("sample", data[:, -2].copy()),
            "depth_known": ("sample", data[:, -1].copy()),
            "units": ("sample", np.asarray(units, dtype=int)),
        },
        name="area_features",
    )
