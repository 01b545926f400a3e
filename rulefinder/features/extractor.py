"""Feature vectors for recordings: one code path for zoo networks and uploaded recordings.

A recording (dims ``session, stimulus, unit``) becomes one feature vector per area: every
statistic of :mod:`rulefinder.features.statistics` as a trajectory over the canonical grid of
relative time (:mod:`rulefinder.features.resample`), then the area's depth.

* :func:`recording_features` one recording -> ``(area, stat, time)``.
* :func:`block_features` many recordings of the same shape (a zoo shard: ``(R, S, K, N)``
  numpy or torch, or a DataArray with a leading ``network``/``recording`` dim) ->
  ``(recording, area, stat, time)``. The same functions run on the same rows, so both give
  identical numbers for the same recording.
* :class:`FeatureExtractor` the scikit-learn transformer over both: rows are
  ``(recording, area)`` samples, columns the flat feature vector named by ``feature_names_``.

Depth: ``depth`` is the area's position in ``area_order`` as a fraction (0 = input side,
1 = output side; 0.5 for a single area) and ``depth_known`` is 1; without ``area_order``,
``depth`` is 0.5 and ``depth_known`` 0.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import xarray as xr
from sklearn.base import BaseEstimator, TransformerMixin
from threadpoolctl import ThreadpoolController

from rulefinder.features.resample import DEFAULT_N_TIMES, canonical_grid, resample, segments
from rulefinder.features.statistics import STAT_NAMES, area_scale, session_statistics
from rulefinder.memory import keep_freed_memory
from rulefinder.recording.model import DIMS, areas_of, validate_recording

log = logging.getLogger(__name__)

DEPTH_FEATURES = ("depth", "depth_known")
BLOCK_DIMS = ("recording", "session", "stimulus", "unit")


def feature_names(n_times: int = DEFAULT_N_TIMES) -> list[str]:
    """Names of the flat vector: ``<stat>@t<relative time>`` then the depth features."""
    grid = canonical_grid(n_times)
    return [f"{s}@t{g:.2f}" for s in STAT_NAMES for g in grid] + list(DEPTH_FEATURES)


def _depths(areas: Sequence[str], area_order) -> tuple[np.ndarray, bool]:
    if not area_order:
        return np.full(len(areas), 0.5), False
    order = list(area_order)
    span = max(len(order) - 1, 1)
    pos = [order.index(a) / span if len(order) > 1 else 0.5 for a in areas]
    return np.asarray(pos, dtype=np.float64), True


def _area_columns(unit_area: np.ndarray, areas: Sequence[str]) -> list[np.ndarray | slice]:
    """Unit indices of each area: a slice when contiguous (a zoo layer), which avoids a
    gather over the whole block."""
    cols: list[np.ndarray | slice] = []
    for a in areas:
        idx = np.flatnonzero(unit_area == a)
        contiguous = idx[-1] - idx[0] + 1 == idx.size
        cols.append(slice(int(idx[0]), int(idx[-1]) + 1) if contiguous else idx)
    return cols


def _one_blas_thread():
    """Multithreaded BLAS on these small products only fights our own threads (and any other
    work on the machine, where it busy-waits): one BLAS thread, parallel over recordings.

    The controller (a scan of the loaded native libraries, ~10 ms) is made once per process:
    per call it cost a third of a single recording's prediction time. The first call also
    tunes the C allocator (:func:`rulefinder.memory.keep_freed_memory`)."""
    global _CONTROLLER
    if _CONTROLLER is None:
        keep_freed_memory()
        _CONTROLLER = ThreadpoolController()
    return _CONTROLLER.limit(limits=1, user_api="blas")


_CONTROLLER: ThreadpoolController | None = None


def _compute(values: np.ndarray, session_time: np.ndarray, cols: list[np.ndarray], n_times: int) -> np.ndarray:
    """``values`` (R, S, K, N) -> (R, A, F, G). Row-independent: a recording gives the same
    numbers alone or inside a block."""
    r = values.shape[0]
    out = np.empty((r, len(cols), len(STAT_NAMES), n_times))
    # Areas of equal width go through the statistics together, as rows of one block (rows are
    # independent): a recording's areas cost one pass of per-call overhead, not one per area.
    widths: dict[int, list[int]] = {}
    for ai, idx in enumerate(cols):
        width = idx.stop - idx.start if isinstance(idx, slice) else len(idx)
        widths.setdefault(width, []).append(ai)
    for group in widths.values():
        block = np.stack([np.asarray(values[..., cols[ai]], dtype=np.float64) for ai in group], axis=1)
        block = block.reshape(r * len(group), *block.shape[2:])  # (R x areas, S, K, N)
        st = session_time if np.ndim(session_time) == 1 else np.repeat(session_time, len(group), axis=0)
        traj = _session_trajectories(block, st, n_times)
        out[:, group] = resample(traj, st, n_times).reshape(r, len(group), len(STAT_NAMES), n_times)
    return out


def _session_trajectories(
    block: np.ndarray, session_time: np.ndarray, n_times: int, extra=None, computed: np.ndarray | None = None
) -> np.ndarray:
    """``session_statistics(block)`` where the resampling reads it: the grid's interpolation
    uses two sessions per grid point, so with more sessions than that only those (and the
    first and last, which the drift statistics refer to, and ``extra`` sessions) are computed,
    the others left 0; ``computed`` ``(R, S)`` bool, when given, is set where computed.
    The area scale comes from every session either way. Rows go in groups of the same
    session set (a recording with lost values: all), so that a recording's numbers do not
    depend on the block it is in: BLAS rounds a product by its shape."""
    r, s = block.shape[:2]
    scale = area_scale(block)
    j = segments(session_time, n_times, r)
    lost = np.isnan(block.reshape(r, -1)).any(axis=1)
    also = np.asarray([] if extra is None else extra, dtype=int)
    keys = [() if lost[i] else tuple(np.unique(np.concatenate([j[i], j[i] + 1, [0, s - 1], also])).tolist())
            for i in range(r)]
    traj = np.zeros((r, s, len(STAT_NAMES)))
    for key in dict.fromkeys(keys):
        rows = np.flatnonzero([k == key for k in keys])
        need = np.asarray(key) if 0 < len(key) < s else np.arange(s)
        part = session_statistics(block if rows.size == r and need.size == s else block[np.ix_(rows, need)], scale[rows])
        traj[rows[:, None], need[None, :]] = part
        if computed is not None:
            computed[rows[:, None], need[None, :]] = True
        undefined = rows[np.isnan(part).any(axis=(1, 2))] if need.size < s else rows[:0]
        if undefined.size:  # the resampling bridges undefined sessions from every other one
            traj[undefined] = session_statistics(block[undefined], scale[undefined])
            if computed is not None:
                computed[undefined] = True
    return traj


def _as_array(block) -> np.ndarray:
    if hasattr(block, "detach"):  # torch.Tensor, without importing torch here
        block = block.detach().cpu().numpy()
    return np.asarray(block)


def _stat_array(data: np.ndarray, areas, depth, known, n_times, lead: dict | None = None) -> xr.DataArray:
    dims = (*(lead or {}), "area", "stat", "time")
    coords = {
        **{k: v for k, v in (lead or {}).items()},
        "area": list(areas),
        "stat": list(STAT_NAMES),
        "time": canonical_grid(n_times),
        "depth": ("area", depth),
        "depth_known": ("area", np.full(len(areas), float(known))),
    }
    return xr.DataArray(data, dims=dims, coords=coords, name="features")


def recording_features(rec: xr.DataArray, n_times: int = DEFAULT_N_TIMES) -> xr.DataArray:
    """Features of one recording, dims ``(area, stat, time)`` with coords ``depth``,
    ``depth_known`` per area and ``time`` the canonical relative time."""
    arrays = RecordingArrays.of(validate_recording(rec))
    with _one_blas_thread():
        data = arrays.features(n_times)
    depth, known = arrays.depths()
    return _stat_array(data, arrays.areas, depth, known, n_times)


@dataclass(frozen=True)
class RecordingArrays:
    """The numpy arrays of a valid recording that features are computed from, read out of
    the DataArray once (coordinate access costs ~0.1 ms each in xarray)."""

    values: np.ndarray  # (session, stimulus, unit)
    unit_area: np.ndarray  # (unit,) str
    session_time: np.ndarray  # (session,)
    areas: list[str]  # areas_of() order
    area_order: list[str] | None

    @classmethod
    def of(cls, rec: xr.DataArray) -> RecordingArrays:
        """From a recording that passed ``validate_recording``."""
        order = rec.attrs.get("area_order")
        return cls(
            values=rec.transpose(*DIMS).values,
            unit_area=np.asarray(rec.coords["unit_area"].values).astype(str),
            session_time=np.asarray(rec.coords["session_time"].values),
            areas=areas_of(rec),
            area_order=list(order) if order else None,
        )

    def features(self, n_times: int = DEFAULT_N_TIMES) -> np.ndarray:
        """``(area, stat, time)``, the values of :func:`recording_features`."""
        cols = _area_columns(self.unit_area, self.areas)
        return _compute(self.values[None], self.session_time, cols, n_times)[0]

    def features_and_statistics(self, n_times: int, extra_sessions=None) -> tuple[np.ndarray, np.ndarray]:
        """``(area, stat, time)`` as :meth:`features`, and the per-session statistics it was
        resampled from, ``(area, session, stat)``, at the sessions the grid reads plus
        ``extra_sessions`` (NaN at the sessions not computed): one pass for both."""
        cols = _area_columns(self.unit_area, self.areas)
        s = self.values.shape[0]
        traj = np.empty((len(cols), s, len(STAT_NAMES)))
        computed = np.zeros((len(cols), s), dtype=bool)
        widths: dict[int, list[int]] = {}
        for ai, idx in enumerate(cols):
            widths.setdefault(idx.stop - idx.start if isinstance(idx, slice) else len(idx), []).append(ai)
        for group in widths.values():
            block = np.stack([np.asarray(self.values[:, :, cols[ai]], dtype=np.float64) for ai in group])
            done = np.zeros((len(group), s), dtype=bool)
            traj[group] = _session_trajectories(block, self.session_time, n_times, extra_sessions, done)
            computed[group] = done
        feats = resample(traj, self.session_time, n_times)
        return feats, np.where(computed[:, :, None], traj, np.nan)

    def depths(self) -> tuple[np.ndarray, bool]:
        return _depths(self.areas, self.area_order)

    def units(self) -> list[int]:
        return [int((self.unit_area == a).sum()) for a in self.areas]


def block_features(
    block,
    session_time=None,
    unit_area=None,
    area_order: Sequence[str] | None = None,
    n_times: int = DEFAULT_N_TIMES,
    n_threads: int | None = None,
    chunk: int = 4,
) -> xr.DataArray:
    """Features of many recordings of one shape at once, dims ``(recording, area, stat, time)``.

    ``block`` is ``(R, S, K, N)`` (numpy, torch, or a DataArray whose dims are a leading
    recording/network dim then ``session, stimulus, unit``; its ``session_time``, ``unit_area``
    coords and ``area_order`` attr are used when the arguments are not given).
    ``session_time`` is ``(S,)`` or ``(R, S)``; ``unit_area`` ``(N,)``. Work is split into chunks
    of ``chunk`` recordings run on ``n_threads`` threads (default: the CPUs available); numpy
    releases the GIL in the heavy loops.
    """
    lead_name = "recording"
    lead_coord = None
    if isinstance(block, xr.DataArray):
        lead_name = next(d for d in block.dims if d not in DIMS)
        block = block.transpose(lead_name, *DIMS)
        if session_time is None and "session_time" in block.coords:
            session_time = block.coords["session_time"].values
        if unit_area is None and "unit_area" in block.coords:
            unit_area = block.coords["unit_area"].values
        if area_order is None:
            area_order = block.attrs.get("area_order")
        lead_coord = block.coords[lead_name].values if lead_name in block.coords else None
        block = block.values
    values = _as_array(block)
    if values.ndim != 4:
        raise ValueError(f"block has shape {values.shape}: expected 4 dims {BLOCK_DIMS}")
    r, s, k, n = values.shape
    if s < 2 or k < 2 or n < 1:
        raise ValueError(f"block has shape {values.shape}: expected S >= 2, K >= 2, N >= 1")
    st = np.arange(s, dtype=np.float64) if session_time is None else np.asarray(session_time, np.float64)
    if st.shape not in ((s,), (r, s)):
        raise ValueError(f"session_time has shape {st.shape}: expected ({s},) or ({r}, {s})")
    if (np.diff(st, axis=-1) <= 0).any():
        raise ValueError("session_time is not strictly increasing")
    ua = np.full(n, "all") if unit_area is None else np.asarray(unit_area).astype(str)
    if ua.shape != (n,):
        raise ValueError(f"unit_area has shape {ua.shape}: expected ({n},)")
    if area_order:
        areas = [a for a in area_order if a in set(ua.tolist())]
        missing = sorted(set(ua.tolist()) - set(areas))
        if missing:
            raise ValueError(f"area_order {list(area_order)} lacks area(s) {missing}")
    else:
        areas = list(dict.fromkeys(ua.tolist()))
    cols = _area_columns(ua, areas)

    starts = list(range(0, r, max(chunk, 1)))
    out = np.empty((r, len(areas), len(STAT_NAMES), n_times))

    def work(i0: int) -> None:
        i1 = min(i0 + chunk, r)
        sti = st if st.ndim == 1 else st[i0:i1]
        out[i0:i1] = _compute(values[i0:i1], sti, cols, n_times)

    threads = n_threads or len(os.sched_getaffinity(0))
    with _one_blas_thread():
        if threads > 1 and len(starts) > 1:
            with ThreadPoolExecutor(threads) as pool:
                list(pool.map(work, starts))
        else:
            for i0 in starts:
                work(i0)
    depth, known = _depths(areas, area_order)
    lead = {lead_name: lead_coord if lead_coord is not None else np.arange(r)}
    return _stat_array(out, areas, depth, known, n_times, lead)


def flatten(features: xr.DataArray) -> xr.DataArray:
    """``(..., area, stat, time)`` -> ``(sample, feature)``: one row per (recording, area), the
    trajectories flattened stat-major, then ``depth`` and ``depth_known``."""
    lead = [d for d in features.dims if d not in ("area", "stat", "time")]
    f = features.transpose(*lead, "area", "stat", "time")
    n_times = f.sizes["time"]
    traj = f.values.reshape(-1, f.sizes["stat"] * n_times)
    n_area = f.sizes["area"]
    reps = int(np.prod([f.sizes[d] for d in lead])) if lead else 1
    depth = np.tile(f.coords["depth"].values, reps)
    known = np.tile(f.coords["depth_known"].values, reps)
    data = np.concatenate([traj, depth[:, None], known[:, None]], axis=1)
    coords = {
        "feature": feature_names(n_times),
        "area": ("sample", np.tile(np.asarray(f.coords["area"].values), reps)),
        "depth": ("sample", depth),
    }
    for d in lead:
        lv = f.coords[d].values if d in f.coords else np.arange(f.sizes[d])
        coords[d] = ("sample", np.repeat(lv, n_area))
    return xr.DataArray(data, dims=("sample", "feature"), coords=coords, name="features")


class FeatureExtractor(TransformerMixin, BaseEstimator):
    """scikit-learn transformer: recordings -> ``(sample, feature)`` rows, one per area.

    Parameters:
        n_times: points of the canonical relative-time grid each trajectory is resampled onto.
        n_threads: threads for :meth:`transform_block` (default: the CPUs available).
        chunk: recordings per unit of threaded work.

    Stateless: ``fit`` only records ``feature_names_`` and ``n_features_out_``.
    ``transform(recordings)`` takes one recording or an iterable of them (any shapes, any
    areas); ``transform_block(block, ...)`` takes many of the same shape at once. Both return
    an ``xr.DataArray`` with dims ``(sample, feature)`` and sample coords ``recording``,
    ``area``, ``depth``; ``np.asarray`` of it is the matrix a classifier wants.
    """

    def __init__(self, n_times: int = DEFAULT_N_TIMES, n_threads: int | None = None, chunk: int = 4):
        self.n_times = n_times
        self.n_threads = n_threads
        self.chunk = chunk

    def fit(self, X=None, y=None):
        self.feature_names_ = feature_names(self.n_times)
        self.n_features_out_ = len(self.feature_names_)
        return self

    def get_feature_names_out(self, input_features=None) -> np.ndarray:
        return np.asarray(feature_names(self.n_times), dtype=object)

    def transform(self, recordings: xr.DataArray | Iterable[xr.DataArray]) -> xr.DataArray:
        if isinstance(recordings, xr.DataArray):
            recordings = [recordings]
        if not hasattr(self, "feature_names_"):
            self.fit()
        parts = []
        with _one_blas_thread():
            for i, rec in enumerate(recordings):
                flat = flatten(recording_features(rec, self.n_times).expand_dims(recording=[i]))
                parts.append(flat)
        if not parts:
            return xr.DataArray(
                np.empty((0, len(self.feature_names_))),
                dims=("sample", "feature"),
                coords={"feature": self.feature_names_},
                name="features",
            )
        return xr.concat(parts, dim="sample")

    def transform_block(self, block, session_time=None, unit_area=None, area_order=None) -> xr.DataArray:
        if not hasattr(self, "feature_names_"):
            self.fit()
        feats = block_features(
            block, session_time, unit_area, area_order, self.n_times, self.n_threads, self.chunk
        )
        return flatten(feats)
