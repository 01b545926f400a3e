"""The in-memory recording: an ``xarray.DataArray`` named ``responses``.

dims ``(session, stimulus, unit)``; coordinates ``session_time`` (session), ``unit_area``
(unit), ``stimulus`` (stimulus) and optionally ``performance`` (session); attribute
``area_order`` when the depth of the areas is known. Every loader and the zoo build their
recordings through :func:`make_recording`, so every source gets the same checks and messages.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import xarray as xr

from rulefinder.recording.errors import RecordingError, RecordingWarning

DIMS = ("session", "stimulus", "unit")
MIN_SESSIONS = 3
MIN_STIMULI = 2
MIN_UNITS = 1


def _shape(a: np.ndarray) -> str:
    return "(" + ", ".join(str(s) for s in a.shape) + (",)" if a.ndim == 1 else ")")


def _as_float_array(value, source: str, field: str) -> np.ndarray:
    arr = np.asarray(value)
    if arr.dtype == object:
        raise RecordingError(source, field, f"{field} has dtype object: expected a float array")
    if arr.dtype.kind == "b" or arr.dtype.kind in "iuf":
        return arr.astype(np.float64, copy=False)
    raise RecordingError(
        source, field, f"{field} has dtype {arr.dtype}: expected a float (numeric) array"
    )


def _as_str_array(value, source: str, field: str, length: int | None, what: str) -> np.ndarray:
    arr = np.asarray(value)
    if arr.ndim != 1:
        raise RecordingError(
            source, field, f"{field} has shape {_shape(arr)}: expected 1 dimension ({what})"
        )
    if length is not None and arr.shape[0] != length:
        raise RecordingError(
            source, field, f"{field} has length {arr.shape[0]}: expected {length} ({what})"
        )
    if arr.dtype.kind == "T" or (arr.dtype == object and all(isinstance(v, str) for v in arr.tolist())):
        arr = np.array(arr.tolist(), dtype=str)
    if arr.dtype.kind not in "US":
        raise RecordingError(
            source, field, f"{field} has dtype {arr.dtype}: expected unicode strings"
        )
    return arr.astype(str)


def make_recording(
    responses,
    *,
    session_time=None,
    unit_area=None,
    stimulus=None,
    performance=None,
    area_order: Sequence[str] | None = None,
    unit=None,
    source: str = "<memory>",
    attrs: dict | None = None,
) -> xr.DataArray:
    """Validate the parts of a recording and assemble the canonical ``DataArray``.

    ``responses`` has shape ``(session, stimulus, unit)``; every other argument is optional and
    defaults as in the recording format. Raises :class:`RecordingError` naming ``source``, the
    field, what was expected and what was found.
    """
    resp = _as_float_array(responses, source, "responses")
    if resp.ndim != 3:
        raise RecordingError(
            source,
            "responses",
            f"responses has shape {_shape(resp)}: expected 3 dimensions (session, stimulus, unit)",
        )
    n_sess, n_stim, n_unit = resp.shape
    for size, least, name in (
        (n_sess, MIN_SESSIONS, "session"),
        (n_stim, MIN_STIMULI, "stimulus"),
        (n_unit, MIN_UNITS, "unit"),
    ):
        if size < least:
            raise RecordingError(
                source,
                "responses",
                f"responses has shape {_shape(resp)}: expected at least {least} along "
                f"{name}, found {size}",
            )
    if np.isinf(resp).any():
        idx = tuple(int(i) for i in np.argwhere(np.isinf(resp))[0])
        raise RecordingError(
            source,
            "responses",
            f"responses contains +-inf (first at session, stimulus, unit = {idx}): "
            "expected finite values or NaN",
        )
    nan = np.isnan(resp)
    dead_units = np.flatnonzero(nan.all(axis=(0, 1)))
    if dead_units.size:
        raise RecordingError(
            source,
            "responses",
            f"unit {int(dead_units[0])} is NaN in every session ({dead_units.size} such units): "
            "expected at least one value per unit",
        )
    dead_sessions = np.flatnonzero(nan.all(axis=(1, 2)))
    if dead_sessions.size:
        raise RecordingError(
            source,
            "responses",
            f"session {int(dead_sessions[0])} is NaN for every unit: expected at least one "
            "value per session",
        )

    if session_time is None:
        st = np.arange(n_sess, dtype=np.float64)
    else:
        st = _as_float_array(session_time, source, "session_time")
        if st.ndim != 1 or st.shape[0] != n_sess:
            raise RecordingError(
                source,
                "session_time",
                f"session_time has shape {_shape(st)}: expected ({n_sess},), one per session",
            )
        if not np.isfinite(st).all():
            raise RecordingError(
                source, "session_time", "session_time contains NaN or inf: expected finite values"
            )
        steps = np.diff(st)
        if (steps <= 0).any():
            i = int(np.flatnonzero(steps <= 0)[0])
            raise RecordingError(
                source,
                "session_time",
                f"session_time is not strictly increasing: session {i + 1} has time "
                f"{float(st[i + 1])!r} after {float(st[i])!r}",
            )

    if unit_area is None:
        areas = np.full(n_unit, "all", dtype=object).astype(str)
    else:
        areas = _as_str_array(unit_area, source, "unit_area", n_unit, "one area per unit")
        if (np.char.str_len(areas) == 0).any():
            raise RecordingError(
                source, "unit_area", "unit_area contains an empty string: expected area names"
            )

    if stimulus is None:
        stim = np.arange(n_stim)
    else:
        stim = np.asarray(stimulus)
        if stim.dtype.kind == "T":
            stim = np.array(stim.tolist(), dtype=str)
        if stim.ndim != 1 or stim.shape[0] != n_stim:
            raise RecordingError(
                source,
                "stimulus_id",
                f"stimulus_id has shape {_shape(stim)}: expected ({n_stim},), one per stimulus",
            )
        if stim.dtype.kind not in "iuUS":
            raise RecordingError(
                source,
                "stimulus_id",
                f"stimulus_id has dtype {stim.dtype}: expected integers or unicode strings",
            )
        if stim.dtype.kind == "S":
            stim = stim.astype(str)
        if np.unique(stim).size != n_stim:
            raise RecordingError(
                source, "stimulus_id", "stimulus_id has repeated values: expected unique ids"
            )

    coords: dict = {
        "session_time": ("session", st),
        "unit_area": ("unit", areas),
        "stimulus": ("stimulus", stim),
    }
    if unit is not None:
        unit_arr = np.asarray(unit)
        if unit_arr.dtype.kind == "T":
            unit_arr = np.array(unit_arr.tolist(), dtype=str)
        if unit_arr.shape != (n_unit,):
            raise RecordingError(
                source, "unit", f"unit ids have shape {_shape(unit_arr)}: expected ({n_unit},)"
            )
        coords["unit"] = ("unit", unit_arr)

    if performance is not None:
        perf = _as_float_array(performance, source, "performance")
        if perf.ndim != 1 or perf.shape[0] != n_sess:
            raise RecordingError(
                source,
                "performance",
                f"performance has shape {_shape(perf)}: expected ({n_sess},), one per session",
            )
        finite = perf[~np.isnan(perf)]
        if ((finite < 0) | (finite > 1)).any() or np.isinf(perf).any():
            bad = perf[np.isinf(perf) | (perf < 0) | (perf > 1)][0]
            raise RecordingError(
                source,
                "performance",
                f"performance has value {float(bad)!r}: expected values in [0, 1]",
            )
        coords["performance"] = ("session", perf)

    out_attrs = dict(attrs or {})
    if area_order is not None:
        order = np.asarray(area_order)
        if order.ndim == 1 and order.size == 0:
            order = order.astype(str)
        order = _as_str_array(order, source, "area_order", None, "area names")
        if np.unique(order).size != order.size:
            raise RecordingError(
                source, "area_order", "area_order has repeated names: expected each area once"
            )
        missing = sorted(set(areas.tolist()) - set(order.tolist()))
        if missing:
            raise RecordingError(
                source,
                "area_order",
                f"area_order {order.tolist()} lacks area(s) {missing} found in unit_area: "
                "expected every area of unit_area",
            )
        unused = [a for a in order.tolist() if a not in set(areas.tolist())]
        if unused:
            warnings.warn(
                f"{source}: area_order names area(s) {unused} that no unit belongs to",
                RecordingWarning,
                stacklevel=2,
            )
            order = np.array([a for a in order.tolist() if a not in unused])
        out_attrs["area_order"] = order.tolist()

    return xr.DataArray(resp, dims=DIMS, coords=coords, name="responses", attrs=out_attrs)


def validate_recording(rec: xr.DataArray, source: str = "<memory>") -> xr.DataArray:
    """Re-check an existing ``DataArray`` against the contract and return it canonicalised."""
    if not isinstance(rec, xr.DataArray):
        raise RecordingError(
            source, "responses", f"expected an xarray.DataArray, found {type(rec).__name__}"
        )
    if set(rec.dims) != set(DIMS) or rec.ndim != 3:
        raise RecordingError(
            source,
            "responses",
            f"responses has dims {tuple(rec.dims)}: expected {DIMS}",
        )
    rec = rec.transpose(*DIMS)

    def coord(name):
        return rec.coords[name].values if name in rec.coords else None

    return make_recording(
        rec.values,
        session_time=coord("session_time"),
        unit_area=coord("unit_area"),
        stimulus=coord("stimulus"),
        performance=coord("performance"),
        area_order=rec.attrs.get("area_order"),
        unit=coord("unit"),
        source=source,
        attrs={k: v for k, v in rec.attrs.items() if k != "area_order"},
    )


def areas_of(rec: xr.DataArray) -> list[str]:
    """Areas in depth order when ``area_order`` is known, else in order of first appearance."""
    order = rec.attrs.get("area_order")
    if order:
        return list(order)
    seen: dict[str, None] = {}
    for a in rec.coords["unit_area"].values.tolist():
        seen.setdefault(a, None)
    return list(seen)
