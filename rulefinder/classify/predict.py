"""Recordings -> :class:`~rulefinder.classify.result.PredictionResult`: what the CLI, the REST
service and the pipeline call to predict.

:func:`predict_recordings` asks the model's estimator for the probabilities, the open-set score
and the verdict, then adds what the model card knows: the accuracy to expect for a recording of
this size and noise (:func:`expected_accuracy`), and warnings for what limits the answer (few
units, few sessions, areas without depth, no learning visible, circumstances outside the
model's training recordings: :func:`training_range_warnings`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import xarray as xr

from rulefinder.classify.card import AccuracyCell, ModelCard
from rulefinder.classify.registry import DEFAULT_MODEL, LoadedModel, load_model
from rulefinder.classify.result import PredictionResult
from rulefinder.recording.model import areas_of, validate_recording
from rulefinder.vocabulary import DEFAULT_NOISE, NOISE_LEVELS

#: Below these sizes a warning says the answer is limited (the zoo's evaluation grid starts
#: at 10 units and 3 sessions; accuracy rises steeply up to ~30 units and 5 sessions).
FEW_UNITS = 10
FEW_SESSIONS = 5
#: Fraction of a recording's (per-unit normalised) variance that lies between sessions below
#: which no learning is visible: responses are the same in every session up to noise.
NO_CHANGE_FRACTION = 0.01
#: Performance gain (first to best session) below which no learning is visible.
NO_PERFORMANCE_GAIN = 0.02
#: Learning drifts: the first and last sessions differ more than neighbouring sessions do.
#: Below this ratio (first-to-last squared distance over the median squared step between
#: neighbouring sessions) the change is indistinguishable from session-to-session noise:
#: about 1 for a frozen network plus noise or for pure noise (0.89-1.03 on the default zoo's
#: negative controls), 6 or more for 90 % of its networks.
NO_DRIFT_RATIO = 1.5
NO_LEARNING = "no learning visible"
OUTSIDE_TRAINING = "outside the model's training recordings"


@dataclass(frozen=True)
class RecordingSize:
    """What the expected-accuracy table is indexed by."""

    units: int  # in the smallest area
    sessions: int
    smallest_area: str
    area_units: dict[str, int] = field(default_factory=dict, compare=False)  # units per area, in area order


def recording_size(rec: xr.DataArray) -> RecordingSize:
    areas = areas_of(rec)
    unit_area = rec.coords["unit_area"].values
    counts = {a: int(np.sum(unit_area == a)) for a in areas}
    smallest = min(counts, key=counts.get)
    return RecordingSize(units=counts[smallest], sessions=int(rec.sizes["session"]), smallest_area=smallest, area_units=counts)


def expected_accuracy(card: ModelCard, units: int, sessions: int, noise: str) -> tuple[AccuracyCell | None, list[str]]:
    """The card's cell for a recording of this size: the nearest grid cell at or below
    (``units``, ``sessions``) at this noise level; below the grid, the smallest cell plus a warning."""
    cells = [c for c in card.expected_accuracy if c.noise == noise]
    if not cells:
        return None, [f"model {card.name!r} has no expected-accuracy table for noise {noise!r}"]
    warnings = []
    grid_units = sorted({c.units for c in cells})
    grid_sessions = sorted({c.sessions for c in cells})
    below_u = [u for u in grid_units if u <= units]
    below_s = [s for s in grid_sessions if s <= sessions]
    if not below_u:
        warnings.append(
            f"{units} units in the smallest area is below the expected-accuracy grid (smallest: {grid_units[0]} units): "
            "expected_accuracy is the smallest cell's and likely overstates it"
        )
    if not below_s:
        warnings.append(
            f"{sessions} sessions is below the expected-accuracy grid (smallest: {grid_sessions[0]} sessions): "
            "expected_accuracy is the smallest cell's and likely overstates it"
        )
    u = below_u[-1] if below_u else grid_units[0]
    s = below_s[-1] if below_s else grid_sessions[0]
    by_key = {(c.units, c.sessions): c for c in cells}
    cell = by_key.get((u, s))
    if cell is None:  # a sparse table: the best cell that is no larger on either axis
        smaller = [c for c in cells if c.units <= max(u, grid_units[0]) and c.sessions <= max(s, grid_sessions[0])]
        cell = max(smaller, key=lambda c: (c.units * c.sessions, c.units)) if smaller else None
    return cell, warnings


def limit_warnings(rec: xr.DataArray, size: RecordingSize | None = None) -> list[str]:
    """What limits the answer for this recording: few units, few sessions, areas without
    depth, no learning visible."""
    size = size or recording_size(rec)
    out = []
    if size.units < FEW_UNITS:
        out.append(f"few units: area {size.smallest_area!r} has {size.units} (accuracy rises steeply up to ~30 units per area)")
    if size.sessions < FEW_SESSIONS:
        out.append(f"few sessions: {size.sessions} (the learning trajectory is sampled coarsely; 5 or more help)")
    if not rec.attrs.get("area_order"):
        areas = areas_of(rec)
        what = f"{len(areas)} areas" if len(areas) > 1 else f"area {areas[0]!r}"
        out.append(f"areas without depth: {what} with no area_order; give --area-order (input to output side) if known")
    reason = _no_learning(rec)
    if reason:
        out.append(f"{NO_LEARNING}: {reason}")
    return out


def training_range_warnings(rec: xr.DataArray, card: ModelCard, size: RecordingSize | None = None) -> list[str]:
    """Where the recording's circumstances lie outside every recording the model was trained on:
    the card's ``training_ranges`` (stimuli, sessions, units per area, each ``[min, max]``), or
    for a card without them its zoo spec's ``recording`` (``probes``, ``checkpoints``,
    ``units_per_layer``; virtual experiments then only ever removed units and sessions). A
    stimulus count off the training range puts the stimulus-dependent statistics off theirs
    (docs/results.md, "Out-of-zoo recordings": the answer for the same network moves with the
    stimulus count). Fewer sessions or units are the expected-accuracy table's business."""
    size = size or recording_size(rec)
    if card.training_ranges is not None:
        r = card.training_ranges
        stimuli = r.stimuli
        sessions_max = r.sessions[1] if r.sessions else None
        units_max = r.units_per_area[1] if r.units_per_area else None
    else:
        spec = card.zoo.spec if isinstance(card.zoo.spec, dict) else {}
        recorded = spec.get("recording") if isinstance(spec.get("recording"), dict) else {}
        probes, sessions_max, units_max = (recorded.get(k) for k in ("probes", "checkpoints", "units_per_layer"))
        stimuli = (probes, probes) if isinstance(probes, int) else None
    out = []
    n_stim = int(rec.sizes["stimulus"])
    if stimuli is not None and not stimuli[0] <= n_stim <= stimuli[1]:
        had = f"had {stimuli[0]}" if stimuli[0] == stimuli[1] else f"had {stimuli[0]}-{stimuli[1]}"
        what = "every training recording" if stimuli[0] == stimuli[1] else "training recordings"
        out.append(f"{OUTSIDE_TRAINING}: {n_stim} stimuli, while {what} of model {card.name!r} "
                   f"{had}; statistics over stimuli are read off their training range")
    if isinstance(sessions_max, int) and size.sessions > sessions_max:
        out.append(f"{OUTSIDE_TRAINING}: {size.sessions} sessions, while training recordings of model "
                   f"{card.name!r} had at most {sessions_max}")
    if isinstance(units_max, int):
        big = {a: n for a, n in size.area_units.items() if n > units_max}
        if big:
            listed = ", ".join(f"{a!r} {n}" for a, n in big.items())
            out.append(f"{OUTSIDE_TRAINING}: units per area {listed}, while training recordings of model "
                       f"{card.name!r} had at most {units_max} per area (subsample the units to compare like with like)")
    return out


def _no_learning(rec: xr.DataArray) -> str | None:
    if "performance" in rec.coords:
        perf = np.asarray(rec.coords["performance"].values, dtype=np.float64)
        if np.isfinite(perf).sum() >= 2:
            gain = np.nanmax(perf) - perf[np.isfinite(perf)][0]
            if gain < NO_PERFORMANCE_GAIN:
                return f"performance rises by {gain:.3f} from the first session (at most)"
    x = np.asarray(rec.transpose("session", "stimulus", "unit").values, dtype=np.float64)
    # numpy's nan-functions copy and mask the whole recording: the plain ones where no value
    # is missing (a few times faster, same numbers up to rounding).
    has_nan = bool(np.isnan(x).any())
    total = np.nanvar(x, axis=(0, 1)) if has_nan else x.reshape(-1, x.shape[2]).var(axis=0)  # per unit
    live = total > 0
    if not live.any():
        return "every unit is constant"
    # The session-dependent part of each response: its deviation from the same unit's and
    # stimulus's mean over sessions (session effects plus session x stimulus interactions).
    if has_nan:
        session_part = np.nanmean((x - np.nanmean(x, axis=0, keepdims=True)) ** 2, axis=(0, 1))
    else:
        session_part = x.var(axis=0).mean(axis=0)
    frac = float(np.mean(session_part[live] / total[live]))
    if frac < NO_CHANGE_FRACTION:
        return f"responses change by {frac:.2%} of their variance across sessions"
    if x.shape[0] >= 3:
        z = np.nan_to_num(x) if has_nan else x  # (a valid recording holds no inf)
        steps = ((z[1:] - z[:-1]) ** 2).sum(axis=(1, 2))
        change, step = float(((z[-1] - z[0]) ** 2).sum()), float(np.median(steps))
        # most neighbouring sessions identical (a step schedule, repeated checkpoints): any
        # first-to-last change is then infinitely more than the typical step
        ratio = change / step if step > 0 else (math.inf if change > 0 else 0.0)
        if ratio < NO_DRIFT_RATIO:
            return (f"the first and last sessions differ {ratio:.2f}x as much as neighbouring sessions do "
                    "(change indistinguishable from session-to-session noise)")
    return None


def no_learning(rec: xr.DataArray) -> str | None:
    """Why no learning is visible in a valid recording (``None`` when it is): then the verdict
    is ``unknown``, whatever the classifier says: there is nothing to identify."""
    return _no_learning(rec)


def resolve_model(model: str | LoadedModel | None) -> LoadedModel:
    if isinstance(model, LoadedModel):
        return model
    return load_model(model or DEFAULT_MODEL)


def _top(p: dict[str, float]) -> str:
    return max(p, key=p.get)


def predict_recordings(
    recordings: Sequence[xr.DataArray],
    model: str | LoadedModel | None = None,
    noise: str = DEFAULT_NOISE,
    group: bool = False,
) -> list[PredictionResult]:
    """One :class:`PredictionResult` per recording, in order (or one for the group with
    ``group=True``: the recordings, e.g. animals of one experiment, combine into one verdict).

    ``noise`` is the recording's noise level (``none``, ``moderate``, ``high``) as its user
    knows it; it picks the expected-accuracy cell. Raises ``RecordingError`` for an invalid
    recording and ``ModelError`` for a model that cannot be loaded.
    """
    if noise not in NOISE_LEVELS:
        raise ValueError(f"noise is {noise!r}: expected one of {', '.join(NOISE_LEVELS)}")
    if isinstance(recordings, xr.DataArray):
        recordings = [recordings]
    recordings = [validate_recording(r) for r in recordings]
    if not recordings:
        raise ValueError("no recordings to predict")
    loaded = resolve_model(model)
    details = loaded.estimator.predict_details(recordings, group=group, validated=True)
    sizes = [recording_size(r) for r in recordings]
    notes = [limit_warnings(r, s) + training_range_warnings(r, loaded.card, s) for r, s in zip(recordings, sizes, strict=True)]
    # Nothing to identify where no learning is visible (a group: in none of its recordings).
    frozen = [any(w.startswith(NO_LEARNING) for w in ws) for ws in notes]
    for d, f in zip(details, [all(frozen)] if group else frozen, strict=True):
        if f:
            d["verdict"] = "unknown"
    cells = [expected_accuracy(loaded.card, s.units, s.sessions, noise) for s in sizes]

    if group:
        # Conservative: the table is measured on single recordings, and the group is read as
        # well as its weakest member at least.
        known = [(c, w) for c, w in cells if c is not None]
        cell, cell_warn = min(known, key=lambda cw: cw[0].accuracy) if known else cells[0]
        extra = [f"recording {i}: {w}" for i, ws in enumerate(notes) for w in ws] if len(recordings) > 1 else notes[0]
        return [_result(details[0], loaded, noise, len(recordings), cell, cell_warn + extra)]
    return [
        _result(d, loaded, noise, 1, cell, cw + note)
        for d, (cell, cw), note in zip(details, cells, notes, strict=True)
    ]


def _result(d: dict, loaded: LoadedModel, noise: str, n: int, cell: AccuracyCell | None, warnings: list[str]) -> PredictionResult:
    merged = list(dict.fromkeys([*d.get("warnings", []), *warnings]))
    return PredictionResult(
        **{k: v for k, v in d.items() if k != "warnings"},
        top_rule=_top(d["rule_probabilities"]),
        top_family=_top(d["family_probabilities"]),
        top_optimizer=_top(d["optimizer_probabilities"]),
        expected_accuracy=None if cell is None else cell.accuracy,
        noise=noise,
        n_recordings=n,
        model=loaded.ref,
        warnings=merged,
    )
