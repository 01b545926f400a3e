"""Neurodata Without Borders (``.nwb``) session files: one file per session.

Reading follows RECORDING_FORMAT.md section 2: the response of a unit to a stimulus in a
session is the mean over that stimulus's trials of the mean signal (optical physiology) or of
the spike rate (extracellular units) within ``[start_time, stop_time]``. Raw imaging
(``TwoPhotonSeries``) is never touched: pynwb reads datasets lazily and only the trials table,
the ROI response series and the units table are read.
"""

from __future__ import annotations

import uuid
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import h5py
import numpy as np
import xarray as xr

from rulefinder.recording.errors import RecordingError, RecordingWarning, library_errors, short
from rulefinder.recording.model import make_recording
from rulefinder.settings import get_settings


# What h5py, hdmf and pynwb raise on a damaged file: h5py maps HDF5 errors to OSError,
# KeyError ("unable to open object"), ValueError, RuntimeError; hdmf raises ConstructError and
# BuildError and, on objects it rebuilds from damaged attributes, ValueError/TypeError/
# KeyError/IndexError/AttributeError; a damaged cached schema fails JSON parsing (ValueError).
# Only raised inside these packages do they mean "damaged": the same type from our own code is
# a bug and propagates (library_errors).
_NWB_PACKAGES = ("h5py", "hdmf", "pynwb", "json", "jsonschema")


def _nwb_errors() -> tuple[type[BaseException], ...]:
    from hdmf.build.errors import BuildError, ConstructError

    return (OSError, KeyError, ValueError, TypeError, IndexError, RuntimeError, AttributeError,
            ConstructError, BuildError)


@dataclass
class _Session:
    """What one session file contributes before sessions are matched."""

    path: str
    start: datetime
    kind: str  # "ophys" | "units"
    stimuli: np.ndarray  # unique stimulus ids of this session, sorted
    responses: np.ndarray  # (stimulus, unit) for ``stimuli``
    areas: np.ndarray  # (unit,)
    global_id: np.ndarray | None  # (unit,) or None
    performance: float | None = None
    warnings: list[str] = field(default_factory=list)


def _window_means(t: np.ndarray, y: np.ndarray, start: np.ndarray, stop: np.ndarray) -> np.ndarray:
    """Mean of ``y`` (time, unit) over samples with ``start <= t <= stop``, per trial; NaN-aware.

    Each window is summed on its own (``np.add.reduceat`` over interleaved bounds), not as a
    difference of running sums, which would lose precision over long recordings.
    """
    order = np.argsort(t, kind="stable")
    t, y = t[order], y[order]
    finite = ~np.isnan(y)
    padded = np.vstack([np.where(finite, y, 0.0), np.zeros((1, y.shape[1]))])
    counts = np.vstack([finite, np.zeros((1, y.shape[1]), bool)]).astype(np.int64)
    lo = np.searchsorted(t, start, side="left")
    hi = np.searchsorted(t, stop, side="right")
    bounds = np.stack([lo, hi], axis=1).ravel()
    total = np.add.reduceat(padded, bounds, axis=0)[::2]
    count = np.add.reduceat(counts, bounds, axis=0)[::2]
    count[hi <= lo] = 0
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _per_stimulus(trial_values: np.ndarray, stim: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Average (trial, unit) values over the trials of each stimulus."""
    ids, inverse = np.unique(stim, return_inverse=True)
    out = np.full((ids.size, trial_values.shape[1]), np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for i in range(ids.size):
            rows = trial_values[inverse == i]
            has = ~np.isnan(rows)
            cnt = has.sum(axis=0)
            out[i] = np.where(cnt > 0, np.where(has, rows, 0).sum(axis=0) / np.maximum(cnt, 1), np.nan)
    return ids, out


def _column(table, name: str) -> np.ndarray:
    values = np.asarray(table[name].data[:])
    if values.dtype.kind == "S" or values.dtype == object:
        values = np.array([v.decode() if isinstance(v, bytes) else v for v in values])
        if values.dtype == object:
            values = values.astype(str)
    return values


def _global_ids(table, src: str, name: str) -> np.ndarray | None:
    if "global_id" not in table.colnames:
        return None
    gid = _column(table, "global_id")
    uniq, counts = np.unique(gid, return_counts=True)
    if (counts > 1).any():
        raise RecordingError(
            src,
            "global_id",
            f"global_id of the {name} table repeats value {uniq[counts > 1][0].item()!r}: "
            "expected each unit once per file",
        )
    return gid


def _check_is_nwb(path: Path, src: str) -> None:
    if not path.exists():
        raise RecordingError(src, None, "file not found")
    if not h5py.is_hdf5(path):
        raise RecordingError(
            src, None, "is not an HDF5 file (no HDF5 signature: damaged, or another format): "
            "expected an NWB (HDF5) session file"
        )
    try:
        with h5py.File(path, "r") as f:
            version = f.attrs.get("nwb_version")
    except OSError as exc:
        what = "truncated HDF5 file" if "truncated file" in str(exc) else "cannot be opened as HDF5"
        raise RecordingError(src, None, f"{what}: {short(exc)}") from exc
    if version is None:
        raise RecordingError(
            src, "nwb_version", "is an HDF5 file but not NWB: no nwb_version attribute at the root"
        )


def _read_trials(nwb, src: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    trials = nwb.trials
    if trials is None or len(trials) == 0:
        raise RecordingError(
            src, "trials", "has no trials table: expected trials with start_time, stop_time, stimulus_id"
        )
    if "stimulus_id" not in trials.colnames:
        raise RecordingError(
            src,
            "trials.stimulus_id",
            f"trials table has no stimulus_id column: found columns {list(trials.colnames)}",
        )
    start = np.asarray(trials["start_time"].data[:], dtype=float)
    stop = np.asarray(trials["stop_time"].data[:], dtype=float)
    if (stop < start).any():
        i = int(np.flatnonzero(stop < start)[0])
        raise RecordingError(
            src,
            "trials.stop_time",
            f"trial {i} stops at {stop[i]} before it starts at {start[i]}: expected stop_time >= start_time",
        )
    stim = _column(trials, "stimulus_id")
    if stim.dtype.kind not in "iuU":
        raise RecordingError(
            src,
            "trials.stimulus_id",
            f"trials.stimulus_id has dtype {stim.dtype}: expected integers or strings",
        )
    perf = None
    if "performance" in trials.colnames:
        perf = np.asarray(trials["performance"].data[:], dtype=float)
        bad = perf[(perf < 0) | (perf > 1) | ~np.isfinite(perf)]
        if bad.size:
            raise RecordingError(
                src,
                "trials.performance",
                f"trials.performance has value {float(bad[0])!r}: expected per-trial scores in [0, 1]",
            )
    return start, stop, stim, perf


def _ophys_container(nwb):
    from pynwb.ophys import DfOverF, Fluorescence

    module = nwb.processing.get("ophys") if nwb.processing else None
    if module is None:
        return None
    interfaces = list(module.data_interfaces.values())
    for kind in (DfOverF, Fluorescence):
        for container in interfaces:
            if isinstance(container, kind):
                return container
    return None


def _read_ophys(container, src, start, stop):
    values, areas, gids = [], [], []
    has_gid = []
    for name, rrs in sorted(container.roi_response_series.items()):
        data = np.asarray(rrs.data[:], dtype=float)
        if data.ndim == 1:
            data = data[:, None]
        if rrs.timestamps is not None:
            t = np.asarray(rrs.timestamps[:], dtype=float)
        else:
            t = float(rrs.starting_time or 0.0) + np.arange(data.shape[0]) / float(rrs.rate)
        if t.shape[0] != data.shape[0]:
            raise RecordingError(
                src,
                f"{name}.timestamps",
                f"{name} has {data.shape[0]} samples but {t.shape[0]} timestamps: expected one per sample",
            )
        table = rrs.rois.table
        rows = np.asarray(rrs.rois.data[:], dtype=int)
        if rows.shape[0] != data.shape[1]:
            raise RecordingError(
                src,
                f"{name}.rois",
                f"{name} has {data.shape[1]} columns but {rows.shape[0]} ROIs: expected one ROI per column",
            )
        values.append(_window_means(t, data, start, stop))
        location = getattr(table.imaging_plane, "location", None) or "all"
        areas.extend([str(location)] * rows.shape[0])
        gid = _global_ids(table, src, f"{table.name} (PlaneSegmentation)")
        has_gid.append(gid is not None)
        if gid is not None:
            gids.append(gid[rows])
    if not values:
        raise RecordingError(
            src, "processing/ophys", "the ophys container holds no RoiResponseSeries"
        )
    if any(has_gid) and not all(has_gid):
        raise RecordingError(
            src,
            "global_id",
            "global_id is present in some PlaneSegmentation tables but not others: expected all or none",
        )
    gid = np.concatenate(gids) if gids else None
    if gid is not None:
        uniq, counts = np.unique(gid, return_counts=True)
        if (counts > 1).any():
            raise RecordingError(
                src, "global_id", f"global_id repeats value {uniq[counts > 1][0].item()!r} across planes: expected each unit once"
            )
    return np.concatenate(values, axis=1), np.asarray(areas), gid


def _read_units(units, src, start, stop):
    n = len(units)
    if n == 0:
        raise RecordingError(src, "units", "units table is empty: expected at least one unit")
    if "spike_times" not in units.colnames:
        raise RecordingError(src, "units.spike_times", "units table has no spike_times column")
    counts = np.zeros((start.size, n))
    duration = stop - start
    for i in range(n):
        st = np.sort(np.asarray(units["spike_times"][i], dtype=float))
        counts[:, i] = np.searchsorted(st, stop, side="right") - np.searchsorted(st, start, side="left")
    with np.errstate(invalid="ignore", divide="ignore"):
        rates = np.where(duration[:, None] > 0, counts / duration[:, None], np.nan)
    if "location" in units.colnames:
        areas = _column(units, "location").astype(str)
    elif "electrode_group" in units.colnames:
        areas = np.array([str(units["electrode_group"][i].location or "all") for i in range(n)])
    else:
        areas = np.full(n, "all")
    return rates, areas, _global_ids(units, src, "units")


def read_nwb_session(path: str | Path, *, source: str | None = None) -> _Session:
    """Read one session file into per-stimulus responses (before matching with others)."""
    from pynwb import NWBHDF5IO

    path = Path(path)
    src = source or str(path)
    damaged = library_errors(src, "damaged NWB (HDF5) file", _nwb_errors(), _NWB_PACKAGES)
    with damaged:
        _check_is_nwb(path, src)
        io = NWBHDF5IO(str(path), "r", load_namespaces=True)
    notes = []
    try:
        # pynwb reads lazily: damaged objects and datasets fail here, not only in io.read()
        with damaged:
            nwb = io.read()
            start, stop, stim, perf = _read_trials(nwb, src)
            container = _ophys_container(nwb)
            has_units = nwb.units is not None and len(nwb.units) > 0
            if container is not None:
                if has_units:
                    notes.append(
                        f"{src}: holds both imaging and a units table; the imaging (ophys) signal is used"
                    )
                trial_values, areas, gid = _read_ophys(container, src, start, stop)
                kind = "ophys"
            elif has_units:
                trial_values, areas, gid = _read_units(nwb.units, src, start, stop)
                kind = "units"
            else:
                raise RecordingError(
                    src,
                    "processing/ophys",
                    "has no signal: expected a DfOverF or Fluorescence container in processing['ophys'] "
                    "or a units table with spike_times",
                )
            ids, resp = _per_stimulus(trial_values, stim)
            session_start = nwb.session_start_time
    finally:
        with damaged:
            io.close()
    if session_start.tzinfo is None:
        session_start = session_start.replace(tzinfo=timezone.utc)
    return _Session(
        path=src,
        start=session_start,
        kind=kind,
        stimuli=ids,
        responses=resp,
        areas=areas.astype(str),
        global_id=gid,
        performance=float(np.mean(perf)) if perf is not None and perf.size else None,
        warnings=notes,
    )


def load_nwb(
    paths: Sequence[str | Path],
    *,
    area_order: Sequence[str] | None = None,
    sources: Sequence[str] | None = None,
) -> xr.DataArray:
    """Combine one ``.nwb`` file per session into one recording.

    Sessions are ordered by ``session_start_time`` (``session_time`` in days since the first),
    units matched by ``global_id`` (else by row order), stimuli matched by ``stimulus_id``
    (only those shown in every session are kept).
    """
    paths = [Path(p) for p in paths]
    sources = list(sources) if sources is not None else [str(p) for p in paths]
    label = sources[0] if len(sources) == 1 else f"{sources[0]} (+{len(sources) - 1} more .nwb files)"
    if not paths:
        raise RecordingError("<nwb>", None, "no .nwb files given: expected one file per session")
    timeout = get_settings().nwb_read_timeout_s
    if timeout > 0:  # libhdf5 can hang on a damaged file: read in a process that can be killed
        from rulefinder.recording.nwb_reader import read_sessions

        sessions = read_sessions(paths, sources, timeout)
    else:
        sessions = [read_nwb_session(p, source=s) for p, s in zip(paths, sources)]
    for s in sessions:
        for note in s.warnings:
            warnings.warn(note, RecordingWarning, stacklevel=2)

    kinds = {s.kind for s in sessions}
    if len(kinds) > 1:
        by = {k: [s.path for s in sessions if s.kind == k][0] for k in kinds}
        raise RecordingError(
            label,
            "signal",
            f"sessions mix imaging and spike units (e.g. {by['ophys']} is ophys, {by['units']} has units): "
            "expected one kind of signal in every session",
        )

    sessions.sort(key=lambda s: s.start)
    for a, b in zip(sessions, sessions[1:]):
        if a.start == b.start:
            raise RecordingError(
                label,
                "session_start_time",
                f"{a.path} and {b.path} have the same session_start_time {a.start.isoformat()}: "
                "expected distinct times (the session order would be a guess)",
            )
    t0 = sessions[0].start
    session_time = np.array([(s.start - t0).total_seconds() / 86400.0 for s in sessions])

    with_gid = [s.path for s in sessions if s.global_id is not None]
    if with_gid and len(with_gid) != len(sessions):
        without = [s.path for s in sessions if s.global_id is None]
        raise RecordingError(
            label,
            "global_id",
            f"global_id is present in {with_gid[0]} but missing in {without[0]}: expected it in every "
            "session file or in none",
        )

    common = sessions[0].stimuli
    for s in sessions[1:]:
        if s.stimuli.dtype.kind != common.dtype.kind and not (
            s.stimuli.dtype.kind in "iu" and common.dtype.kind in "iu"
        ):
            raise RecordingError(
                label,
                "trials.stimulus_id",
                f"stimulus_id is {common.dtype} in {sessions[0].path} but {s.stimuli.dtype} in {s.path}: "
                "expected the same type in every session",
            )
        common = np.intersect1d(common, s.stimuli)
    all_ids = sessions[0].stimuli
    for s in sessions[1:]:
        all_ids = np.union1d(all_ids, s.stimuli)
    if common.size < all_ids.size:
        dropped = np.setdiff1d(all_ids, common)
        warnings.warn(
            f"{label}: {dropped.size} stimulus id(s) not shown in every session were dropped "
            f"(e.g. {dropped[:5].tolist()}); {common.size} kept",
            RecordingWarning,
            stacklevel=2,
        )

    if with_gid:
        unit_ids: dict = {}
        for s in sessions:
            for g, a in zip(s.global_id.tolist(), s.areas.tolist()):
                if g in unit_ids and unit_ids[g][0] != a:
                    raise RecordingError(
                        label,
                        "global_id",
                        f"unit with global_id {g!r} is in area {unit_ids[g][0]!r} in {unit_ids[g][1]} "
                        f"but {a!r} in {s.path}: expected one area per unit",
                    )
                unit_ids.setdefault(g, (a, s.path))
        ids = list(unit_ids)
        index = {g: i for i, g in enumerate(ids)}
        areas = np.array([unit_ids[g][0] for g in ids])
        unit_coord = np.asarray(ids)
    else:
        p0, n0 = sessions[0].path, sessions[0].areas.size
        other = next((s for s in sessions if s.areas.size != n0), None)
        if other is not None:
            raise RecordingError(
                label,
                "units",
                f"{p0} has {n0} units but {other.path} has {other.areas.size}: without a global_id "
                "column units are matched by row order, so every session must have the same count",
            )
        areas = sessions[0].areas
        for s in sessions[1:]:
            if not np.array_equal(s.areas, areas):
                i = int(np.flatnonzero(s.areas != areas)[0])
                raise RecordingError(
                    label,
                    "units",
                    f"unit {i} is in area {areas[i]!r} in {sessions[0].path} but {s.areas[i]!r} in "
                    f"{s.path}: units matched by row order must keep their area",
                )
        unit_coord = None

    n_units = areas.size
    responses = np.full((len(sessions), common.size, n_units), np.nan)
    for k, s in enumerate(sessions):
        rows = np.searchsorted(s.stimuli, common)
        block = s.responses[rows]
        if with_gid:
            cols = np.array([index[g] for g in s.global_id.tolist()], dtype=int)
            responses[k][:, cols] = block
        else:
            responses[k] = block

    perf = [s.performance for s in sessions]
    if all(p is not None for p in perf):
        performance = np.array(perf)
    else:
        performance = None
        if any(p is not None for p in perf):
            warnings.warn(
                f"{label}: trials.performance is present in some sessions only; performance is left out",
                RecordingWarning,
                stacklevel=2,
            )
    return make_recording(
        responses,
        session_time=session_time,
        unit_area=areas,
        stimulus=common,
        performance=performance,
        area_order=area_order,
        unit=unit_coord,
        source=label,
    )


def _id_value(v):
    return v.item() if isinstance(v, np.generic) else v


def write_nwb_sessions(
    rec: xr.DataArray,
    directory: str | Path,
    *,
    kind: str = "ophys",
    container: str = "DfOverF",
    global_id: bool = True,
    start: datetime | None = None,
    trials_per_stimulus: int = 1,
    prefix: str = "session",
    cache_spec: bool = True,
) -> list[Path]:
    """Write ``rec`` as one NWB file per session (used for examples, tests and demos).

    ``kind="ophys"``: one imaging plane per area (``location`` = area) in a ``DfOverF`` (or
    ``Fluorescence``) container; each trial holds one sample equal to the response, so reading
    it back gives the same numbers. ``kind="units"``: a units table with a ``location`` column
    and ``round(response * duration)`` evenly spaced spikes per 1-s trial (non-negative
    responses only). Units NaN in a whole session are left out of that session's file when
    ``global_id`` is on. ``cache_spec=False`` leaves the NWB schema out of the files (much
    smaller; readers use the core schema that pynwb ships).
    """
    from pynwb import NWBHDF5IO, NWBFile
    from pynwb.ophys import (
        DfOverF,
        Fluorescence,
        ImageSegmentation,
        OpticalChannel,
        RoiResponseSeries,
    )

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    start = start or datetime(2026, 1, 5, 9, 0, tzinfo=timezone.utc)
    rec = rec.transpose("session", "stimulus", "unit")
    data = rec.values
    stim = rec.coords["stimulus"].values
    areas = rec.coords["unit_area"].values.astype(str)
    unit_ids = rec.coords["unit"].values if "unit" in rec.coords else np.arange(rec.sizes["unit"])
    area_names = list(dict.fromkeys(areas.tolist()))
    times = rec.coords["session_time"].values
    perf = rec.coords["performance"].values if "performance" in rec.coords else None
    n_stim = stim.size
    paths = []
    for s in range(rec.sizes["session"]):
        nwb = NWBFile(
            session_description=f"rulefinder session {s}",
            identifier=str(uuid.uuid4()),
            session_start_time=start + timedelta(days=float(times[s] - times[0])),
        )
        nwb.add_trial_column(name="stimulus_id", description="probe stimulus shown")
        if perf is not None:
            nwb.add_trial_column(name="performance", description="per-trial score in [0, 1]")
        trial_start = []
        for r in range(trials_per_stimulus):
            for k in range(n_stim):
                t0 = 2.0 * (r * n_stim + k)
                trial_start.append(t0)
                extra = {"performance": float(perf[s])} if perf is not None else {}
                sid = stim[k].item() if hasattr(stim[k], "item") else stim[k]
                nwb.add_trial(start_time=t0, stop_time=t0 + 1.0, stimulus_id=sid, **extra)
        present = ~np.isnan(data[s]).all(axis=0) if global_id else np.ones(areas.size, bool)
        if kind == "ophys":
            device = nwb.create_device(name="microscope")
            module = nwb.create_processing_module(name="ophys", description="optical physiology")
            seg = ImageSegmentation()
            module.add(seg)
            holder = DfOverF() if container == "DfOverF" else Fluorescence()
            module.add(holder)
            for a_i, area in enumerate(area_names):
                cols = np.flatnonzero((areas == area) & present)
                if cols.size == 0:
                    continue
                plane = nwb.create_imaging_plane(
                    name=f"plane{a_i}",
                    optical_channel=OpticalChannel(name="channel", description="green", emission_lambda=510.0),
                    imaging_rate=1.0,
                    description=f"plane in {area}",
                    device=device,
                    excitation_lambda=920.0,
                    indicator="GCaMP6s",
                    location=area,
                )
                ps = seg.create_plane_segmentation(
                    name=f"PlaneSegmentation{a_i}", description=area, imaging_plane=plane
                )
                if global_id:
                    ps.add_column(name="global_id", description="unit id stable across sessions")
                for c in cols:
                    extra = {"global_id": _id_value(unit_ids[c])} if global_id else {}
                    ps.add_roi(pixel_mask=[(0, 0, 1.0)], **extra)
                region = ps.create_roi_table_region(region=list(range(cols.size)), description="rois")
                values = np.tile(data[s][:, cols], (trials_per_stimulus, 1))
                holder.create_roi_response_series(
                    name=f"RoiResponseSeries{a_i}",
                    data=values,
                    rois=region,
                    unit="a.u.",
                    timestamps=np.asarray(trial_start) + 0.5,
                )
        elif kind == "units":
            nwb.add_unit_column(name="location", description="brain area")
            if global_id:
                nwb.add_unit_column(name="global_id", description="unit id stable across sessions")
            for c in np.flatnonzero(present):
                spikes = []
                for r in range(trials_per_stimulus):
                    for k in range(n_stim):
                        v = data[s, k, c]
                        n = 0 if np.isnan(v) else int(round(float(v)))
                        if n < 0:
                            raise ValueError("spike units need non-negative responses")
                        t0 = 2.0 * (r * n_stim + k)
                        spikes.extend((t0 + (np.arange(n) + 0.5) / max(n, 1)).tolist())
                extra = {"global_id": _id_value(unit_ids[c])} if global_id else {}
                nwb.add_unit(spike_times=spikes, location=str(areas[c]), **extra)
        else:
            raise ValueError(f"kind must be 'ophys' or 'units', not {kind!r}")
        path = directory / f"{prefix}{s:02d}.nwb"
        with NWBHDF5IO(str(path), "w") as io:
            io.write(nwb, cache_spec=cache_spec)
        paths.append(path)
    return paths
