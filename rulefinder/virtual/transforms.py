"""Virtual-experiment transforms: what an experiment would see of a recording.

Each transform is a small frozen dataclass: its fields are its parameters, ``spec()`` is the
JSON-serialisable dict ``{"op": <name>, **params}`` and ``apply(rec, rng)`` returns a new,
valid recording (``make_recording`` checks it) drawn with the numpy ``Generator`` ``rng``.
Missing values (NaN) stay missing; coordinates (``session_time``, ``unit_area``, stimulus and
unit ids, ``performance``) and attributes follow the kept sessions and units.

Notation: ``x[t, k, u]`` is the response in session t to stimulus k of unit u.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import xarray as xr

from rulefinder.recording.model import DIMS, MIN_SESSIONS, MIN_STIMULI, areas_of, make_recording
from rulefinder.vocabulary import NOISE_LEVELS, SNR_HIGH, SNR_MODERATE, SNR_NONE  # noqa: F401 (re-exported)

log = logging.getLogger(__name__)



class VirtualSpecError(ValueError):
    """A virtual-experiment spec that cannot be turned into a transform."""


def snr_value(snr) -> float:
    """An SNR given as a number, ``"inf"`` or a noise level name -> float (inf = no noise)."""
    if isinstance(snr, str):
        if snr in NOISE_LEVELS:
            return NOISE_LEVELS[snr]
        if snr.lower() in ("inf", "infinity"):
            return math.inf
        raise VirtualSpecError(
            f"snr {snr!r}: expected a positive number, 'inf' or one of {sorted(NOISE_LEVELS)}"
        )
    if isinstance(snr, bool) or not isinstance(snr, (int, float)) or not snr > 0:
        raise VirtualSpecError(f"snr {snr!r}: expected a positive number")
    return float(snr)


def _values(rec: xr.DataArray) -> np.ndarray:
    return rec.transpose(*DIMS).values.astype(np.float64, copy=True)


def rebuild(rec: xr.DataArray, values: np.ndarray, sessions=None, units=None, stimuli=None) -> xr.DataArray:
    """A new recording with ``values`` and ``rec``'s coordinates restricted to the kept
    ``sessions``, ``units`` and ``stimuli`` (index arrays; ``None`` keeps all), validated."""
    rec = rec.transpose(*DIMS)
    s_idx = np.arange(rec.sizes["session"]) if sessions is None else np.asarray(sessions)
    u_idx = np.arange(rec.sizes["unit"]) if units is None else np.asarray(units)
    k_idx = np.arange(rec.sizes["stimulus"]) if stimuli is None else np.asarray(stimuli)
    areas = rec.coords["unit_area"].values[u_idx]
    order = rec.attrs.get("area_order")
    if order:
        present = set(areas.tolist())
        order = [a for a in order if a in present]
    perf = rec.coords["performance"].values[s_idx] if "performance" in rec.coords else None
    unit_ids = rec.coords["unit"].values[u_idx] if "unit" in rec.coords else None
    return make_recording(
        values,
        session_time=rec.coords["session_time"].values[s_idx],
        unit_area=areas,
        stimulus=rec.coords["stimulus"].values[k_idx],
        performance=perf,
        area_order=order or None,
        unit=unit_ids,
        source="virtual",
        attrs={k: v for k, v in rec.attrs.items() if k != "area_order"},
    )


def _keep_units(rec: xr.DataArray, idx: np.ndarray, op: str) -> xr.DataArray:
    """``rec`` restricted to units ``idx``; sessions where none of them has a value (all lost
    there) are dropped, as an experiment with only these units would have no data there."""
    vals = _values(rec)[:, :, idx]
    sessions = np.flatnonzero(~np.isnan(vals).all(axis=(1, 2)))
    if sessions.size < MIN_SESSIONS:
        raise VirtualSpecError(
            f"{op}: the kept units have values in only {sessions.size} sessions: expected at least {MIN_SESSIONS}"
        )
    if sessions.size < vals.shape[0]:
        log.info("%s: dropping %d sessions where no kept unit has a value", op, vals.shape[0] - sessions.size)
    return rebuild(rec, vals[sessions], sessions=sessions, units=idx)


def _check(cond: bool, op: str, message: str) -> None:
    if not cond:
        raise VirtualSpecError(f"{op}: {message}")


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


@dataclass(frozen=True)
class Transform:
    """Base class: ``op`` names the transform in specs; fields are its parameters."""

    op: ClassVar[str] = ""

    def spec(self) -> dict:
        out = {"op": self.op}
        for f in dataclasses.fields(self):
            val = getattr(self, f.name)
            if isinstance(val, float) and math.isinf(val):
                val = "inf"
            elif isinstance(val, tuple):
                val = list(val)
            out[f.name] = val
        return out

    def apply(self, rec: xr.DataArray, rng: np.random.Generator) -> xr.DataArray:
        raise NotImplementedError


# --- sampling: which units, sessions and areas are seen ------------------------------------


@dataclass(frozen=True)
class KeepUnits(Transform):
    """Keep ``n`` units chosen uniformly at random without replacement (all if there are
    fewer); with ``per_area``, ``n`` from each area. Kept units keep their order and area.
    Sessions where no kept unit has a value are dropped (at least 3 must remain)."""

    op: ClassVar[str] = "keep_units"
    n: int = 32
    per_area: bool = False

    def __post_init__(self):
        _check(_is_int(self.n) and self.n >= 1, self.op, f"n is {self.n!r}: expected an integer >= 1")
        _check(isinstance(self.per_area, bool), self.op, f"per_area is {self.per_area!r}: expected true or false")

    def apply(self, rec, rng):
        areas = rec.coords["unit_area"].values
        if self.per_area:
            groups = [np.flatnonzero(areas == a) for a in areas_of(rec)]
        else:
            groups = [np.arange(areas.size)]
        keep = [g if g.size <= self.n else rng.choice(g, self.n, replace=False) for g in groups]
        idx = np.sort(np.concatenate(keep))
        return _keep_units(rec, idx, self.op)


@dataclass(frozen=True)
class KeepSessions(Transform):
    """Keep ``n`` sessions (at least 3), in time order: ``even`` spaced evenly over the
    recording (first and last included), ``random`` a uniform random subset, ``early`` the
    first ``n``. Units left with no value in any kept session are dropped."""

    op: ClassVar[str] = "keep_sessions"
    n: int = 5
    mode: str = "even"

    MODES: ClassVar[tuple[str, ...]] = ("even", "random", "early")

    def __post_init__(self):
        _check(_is_int(self.n) and self.n >= MIN_SESSIONS, self.op,
               f"n is {self.n!r}: expected an integer >= {MIN_SESSIONS}")
        _check(self.mode in self.MODES, self.op, f"mode is {self.mode!r}: expected one of {list(self.MODES)}")

    def apply(self, rec, rng):
        s = rec.sizes["session"]
        if self.n >= s:
            return rec
        if self.mode == "even":
            idx = np.unique(np.round(np.linspace(0, s - 1, self.n)).astype(int))
        elif self.mode == "random":
            idx = np.sort(rng.choice(s, self.n, replace=False))
        else:
            idx = np.arange(self.n)
        vals = _values(rec)[idx]
        alive = np.flatnonzero(~np.isnan(vals).all(axis=(0, 1)))
        if alive.size < vals.shape[2]:
            log.info("keep_sessions: dropping %d units absent from every kept session", vals.shape[2] - alive.size)
        if alive.size == 0:
            raise VirtualSpecError(f"{self.op}: no unit has a value in the kept sessions {idx.tolist()}")
        # A session whose units are all gone: keep_sessions cannot fix that, the data lacks it.
        return rebuild(rec, vals[:, :, alive], sessions=idx, units=alive)


@dataclass(frozen=True)
class DropAreas(Transform):
    """Remove every unit of the named ``areas`` (names absent from the recording are ignored);
    with ``n`` instead, drop ``n`` areas chosen at random. At least one area must remain;
    sessions where no remaining unit has a value are dropped (at least 3 must remain)."""

    op: ClassVar[str] = "drop_areas"
    areas: tuple[str, ...] = ()
    n: int = 0

    def __post_init__(self):
        areas = self.areas
        if isinstance(areas, str) or not all(isinstance(a, str) for a in areas):
            raise VirtualSpecError(f"{self.op}: areas is {areas!r}: expected a list of area names")
        object.__setattr__(self, "areas", tuple(areas))
        _check(_is_int(self.n) and self.n >= 0, self.op, f"n is {self.n!r}: expected an integer >= 0")
        _check(bool(self.areas) != (self.n > 0), self.op, "give either areas (names) or n (a count), not both or neither")

    def apply(self, rec, rng):
        present = areas_of(rec)
        if self.n:
            _check(self.n < len(present), self.op, f"cannot drop {self.n} of {len(present)} areas")
            drop = set(rng.choice(present, self.n, replace=False).tolist())
        else:
            drop = set(self.areas)
        keep_areas = [a for a in present if a not in drop]
        _check(bool(keep_areas), self.op, f"dropping {sorted(drop)} leaves no area")
        idx = np.flatnonzero(np.isin(rec.coords["unit_area"].values, keep_areas))
        return _keep_units(rec, idx, self.op)


@dataclass(frozen=True)
class KeepStimuli(Transform):
    """Keep ``n`` stimuli (at least 2) chosen uniformly at random without replacement, in
    their recorded order with their ids; ``n = [lo, hi]`` draws the count uniformly from
    ``lo..hi`` at each application, with ``hi`` capped at the recording's count (so one range
    serves recordings of several sizes). A fixed ``n``, or ``lo``, above the recording's count
    is an error: an experiment cannot show stimuli that were never recorded. Units and
    sessions are kept; a unit whose values all lie on dropped stimuli becomes empty and is
    dropped, as are sessions left without a value."""

    op: ClassVar[str] = "keep_stimuli"
    n: int | tuple[int, int] = 16

    def __post_init__(self):
        n = self.n
        if isinstance(n, list):
            n = tuple(n)
            object.__setattr__(self, "n", n)
        if isinstance(n, tuple):
            _check(len(n) == 2 and all(_is_int(v) for v in n) and MIN_STIMULI <= n[0] <= n[1], self.op,
                   f"n is {list(n)!r}: expected an integer >= {MIN_STIMULI} or a range [lo, hi] of integers "
                   f"with {MIN_STIMULI} <= lo <= hi")
        else:
            _check(_is_int(n) and n >= MIN_STIMULI, self.op,
                   f"n is {n!r}: expected an integer >= {MIN_STIMULI} or a range [lo, hi]")

    def apply(self, rec, rng):
        k = rec.sizes["stimulus"]
        lo, hi = self.n if isinstance(self.n, tuple) else (self.n, self.n)
        _check(lo <= k, self.op, f"n is {self.spec()['n']!r}: the recording has only {k} stimuli")
        n = int(rng.integers(lo, min(hi, k) + 1)) if hi > lo else lo
        if n == k:
            return rebuild(rec, _values(rec))
        idx = np.sort(rng.choice(k, n, replace=False))
        vals = _values(rec)[:, idx]
        units = np.flatnonzero(~np.isnan(vals).all(axis=(0, 1)))
        _check(units.size > 0, self.op, f"no unit has a value on the kept stimuli {idx.tolist()}")
        sessions = np.flatnonzero(~np.isnan(vals[:, :, units]).all(axis=(1, 2)))
        _check(sessions.size >= MIN_SESSIONS, self.op,
               f"the kept stimuli have values in only {sessions.size} sessions: expected at least {MIN_SESSIONS}")
        return rebuild(rec, vals[sessions][:, :, units], sessions=sessions, units=units, stimuli=idx)


# --- measurement ---------------------------------------------------------------------------


def _signal_var(x: np.ndarray) -> np.ndarray:
    """Per unit: the variance across stimuli of its mean responses, averaged over sessions."""
    ok = ~np.isnan(x)
    n_k = ok.sum(axis=1)
    z = np.where(ok, x, 0.0)
    mean = z.sum(axis=1) / np.maximum(n_k, 1)
    var = (np.where(ok, x - mean[:, None, :], 0.0) ** 2).sum(axis=1) / np.maximum(n_k, 1)
    seen = n_k > 0  # sessions where the unit was recorded
    return np.where(seen, var, 0.0).sum(axis=0) / np.maximum(seen.sum(axis=0), 1)


@dataclass(frozen=True)
class GaussianNoise(Transform):
    """Additive Gaussian noise at signal-to-noise ratio ``snr`` (a number, ``"inf"`` or a noise
    level: none / moderate / high = inf / 2 / 0.5): x + e with e ~ N(0, v_u / snr), where v_u
    is unit u's signal variance, the variance across stimuli of its responses averaged over
    sessions. A constant unit has no signal and gets no noise. ``trials``: the response is
    the mean of that many noisy trials, so the noise variance is v_u / (snr * trials)."""

    op: ClassVar[str] = "gaussian_noise"
    snr: float | str = "moderate"
    trials: int = 1

    def __post_init__(self):
        try:
            snr_value(self.snr)
        except VirtualSpecError as e:
            raise VirtualSpecError(f"{self.op}: {e}") from None
        _check(_is_int(self.trials) and self.trials >= 1, self.op, f"trials is {self.trials!r}: expected an integer >= 1")

    def apply(self, rec, rng):
        snr = snr_value(self.snr)
        if math.isinf(snr):
            return rebuild(rec, _values(rec))
        x = _values(rec)
        sd = np.sqrt(_signal_var(x) / (snr * self.trials))
        return rebuild(rec, x + rng.standard_normal(x.shape) * sd[None, None, :])


def _rates(x: np.ndarray, rate_scale: float) -> np.ndarray:
    """Non-negative rates: each unit shifted so its smallest response is 0, times the scale."""
    lo = np.nanmin(x, axis=(0, 1))
    return (x - lo[None, None, :]) * rate_scale


@dataclass(frozen=True)
class PoissonCounts(Transform):
    """Spike counts: each unit's responses shifted so its minimum is 0 (firing rates are
    non-negative; a unit's baseline is arbitrary), times ``rate_scale`` = expected spikes per
    trial at one unit of activity above the minimum, give lambda; the response is the mean over
    ``trials`` trials of Poisson(lambda) counts (mean lambda, variance lambda / trials)."""

    op: ClassVar[str] = "poisson"
    rate_scale: float = 10.0
    trials: int = 1

    def __post_init__(self):
        _check(_is_num(self.rate_scale) and self.rate_scale > 0 and math.isfinite(self.rate_scale),
               self.op, f"rate_scale is {self.rate_scale!r}: expected a positive number")
        _check(_is_int(self.trials) and self.trials >= 1, self.op, f"trials is {self.trials!r}: expected an integer >= 1")

    def apply(self, rec, rng):
        x = _values(rec)
        lam = _rates(x, float(self.rate_scale))
        nan = np.isnan(lam)
        counts = rng.poisson(np.where(nan, 0.0, lam) * self.trials) / self.trials
        return rebuild(rec, np.where(nan, np.nan, counts))


@dataclass(frozen=True)
class Calcium(Transform):
    """Two-photon calcium imaging of each session.

    Time axis: within a session the stimuli are shown one after another, in stimulus order
    (``order="stimulus"``) or in a fresh random order per session (``order="random"``); one
    presentation is one time step. Spiking activity a = rate_scale * (x - min_u x) >= 0 (as
    in ``poisson``) drives the calcium-bound fluorescence through an exponential kernel with
    decay ``tau`` presentations, F_i = F0 + sum_{j <= i} a_j exp(-(i - j) / tau) (tau = 0: no
    smearing), so each response carries the tail of the ones before it. Shot noise
    N(0, (noise * F0)^2) is added and F clipped at 0 (light is non-negative). The recording
    returned is dF/F = (F - F0) / F0 (``dff=True``, >= -1, and >= 0 without noise) or F
    itself (``dff=False``, >= 0), back in stimulus order. F0 = 1.
    """

    op: ClassVar[str] = "calcium"
    tau: float = 1.0
    noise: float = 0.05
    rate_scale: float = 1.0
    order: str = "random"
    dff: bool = True

    ORDERS: ClassVar[tuple[str, ...]] = ("random", "stimulus")

    def __post_init__(self):
        _check(_is_num(self.tau) and self.tau >= 0 and math.isfinite(self.tau), self.op, f"tau is {self.tau!r}: expected a number >= 0")
        _check(_is_num(self.noise) and self.noise >= 0 and math.isfinite(self.noise), self.op, f"noise is {self.noise!r}: expected a number >= 0")
        _check(_is_num(self.rate_scale) and self.rate_scale > 0 and math.isfinite(self.rate_scale),
               self.op, f"rate_scale is {self.rate_scale!r}: expected a positive number")
        _check(self.order in self.ORDERS, self.op, f"order is {self.order!r}: expected one of {list(self.ORDERS)}")
        _check(isinstance(self.dff, bool), self.op, f"dff is {self.dff!r}: expected true or false")

    def apply(self, rec, rng):
        x = _values(rec)
        s, k, _ = x.shape
        nan = np.isnan(x)
        a = np.where(nan, 0.0, _rates(x, float(self.rate_scale)))
        if self.order == "random":
            orders = np.stack([rng.permutation(k) for _ in range(s)])
        else:
            orders = np.tile(np.arange(k), (s, 1))
        seq = np.take_along_axis(a, orders[:, :, None], axis=1)  # presentation order
        calcium = np.empty_like(seq)
        decay = math.exp(-1.0 / self.tau) if self.tau > 0 else 0.0
        acc = np.zeros((s, seq.shape[2]))
        for i in range(k):  # AR(1) form of the exponential kernel
            acc = acc * decay + seq[:, i]
            calcium[:, i] = acc
        f0 = 1.0
        f = f0 + calcium
        if self.noise > 0:
            f = f + rng.standard_normal(f.shape) * (self.noise * f0)
        f = np.maximum(f, 0.0)
        out = np.empty_like(f)
        np.put_along_axis(out, orders[:, :, None], f, axis=1)  # back to stimulus order
        if self.dff:
            out = (out - f0) / f0
        return rebuild(rec, np.where(nan, np.nan, out))


@dataclass(frozen=True)
class TrialVariability(Transform):
    """Trial-to-trial variability: each response is the mean over ``trials`` trials of
    g * x + e, with a gain g ~ LogNormal(0, gain_sd^2) shared by all units on a trial
    (normalised to mean 1) and private noise e ~ N(0, v_u / snr) per trial (v_u as in
    ``gaussian_noise``; ``snr`` per trial). Averaging T trials divides the private noise
    variance by T."""

    op: ClassVar[str] = "trial_variability"
    trials: int = 10
    snr: float | str = 1.0
    gain_sd: float = 0.0

    def __post_init__(self):
        _check(_is_int(self.trials) and self.trials >= 1, self.op, f"trials is {self.trials!r}: expected an integer >= 1")
        try:
            snr_value(self.snr)
        except VirtualSpecError as e:
            raise VirtualSpecError(f"{self.op}: {e}") from None
        _check(_is_num(self.gain_sd) and self.gain_sd >= 0 and math.isfinite(self.gain_sd),
               self.op, f"gain_sd is {self.gain_sd!r}: expected a number >= 0")

    def apply(self, rec, rng):
        x = _values(rec)
        s, k, n = x.shape
        snr = snr_value(self.snr)
        sd = np.zeros(n) if math.isinf(snr) else np.sqrt(_signal_var(x) / snr)
        total = np.zeros_like(x)
        for _ in range(self.trials):
            g = np.exp(rng.normal(-0.5 * self.gain_sd**2, self.gain_sd, size=(s, k, 1)))
            total += g * x + rng.standard_normal(x.shape) * sd
        return rebuild(rec, total / self.trials)


@dataclass(frozen=True)
class UnitLoss(Transform):
    """Units lost from tracking between sessions (their values become NaN).

    ``mode="attrition"``: at each session after the first, each still-tracked unit is lost
    with probability ``p`` and stays lost. ``mode="dropout"``: each unit is missing from each
    session independently with probability ``p``. Every unit keeps at least one session and
    every session at least one unit (a lost value is restored at random where needed), so the
    result stays a valid recording."""

    op: ClassVar[str] = "unit_loss"
    p: float = 0.1
    mode: str = "attrition"

    MODES: ClassVar[tuple[str, ...]] = ("attrition", "dropout")

    def __post_init__(self):
        _check(_is_num(self.p) and 0 <= self.p < 1, self.op, f"p is {self.p!r}: expected a number in [0, 1)")
        _check(self.mode in self.MODES, self.op, f"mode is {self.mode!r}: expected one of {list(self.MODES)}")

    def apply(self, rec, rng):
        x = _values(rec)
        s, _, n = x.shape
        if self.mode == "attrition":
            lost_at = rng.geometric(self.p, size=n) if self.p > 0 else np.full(n, s + 1)
            # geometric >= 1: lost from session lost_at on (session 0 always tracked)
            missing = np.arange(s)[:, None] >= lost_at[None, :]
        else:
            missing = rng.random((s, n)) < self.p
        present = ~np.isnan(x).all(axis=1)  # (s, n) before the loss
        seen = present & ~missing
        for u in np.flatnonzero(~seen.any(axis=0)):  # a unit must keep a session
            missing[rng.choice(np.flatnonzero(present[:, u])), u] = False
            seen[:, u] = present[:, u] & ~missing[:, u]
        for t in np.flatnonzero(~seen.any(axis=1)):  # a session must keep a unit
            missing[t, rng.choice(np.flatnonzero(present[t]))] = False
        x[np.broadcast_to(missing[:, None, :], x.shape)] = np.nan
        return rebuild(rec, x)


@dataclass(frozen=True)
class ScaleOffset(Transform):
    """x -> scale * x + offset + o_u, ``scale`` > 0: the arbitrary units and baseline of a
    measurement. ``unit_offset_sd`` > 0 adds a baseline of its own to each unit,
    o_u ~ N(0, unit_offset_sd^2) (as dF/F or firing rates have). With ``relative``, ``offset``
    and ``unit_offset_sd`` are in units of the scaled recording's standard deviation (every
    value pooled), so one spec means the same baseline for logits of size 10 as for tanh
    units of size 1 (the features are scale invariant, not offset invariant)."""

    op: ClassVar[str] = "scale_offset"
    scale: float = 1.0
    offset: float = 0.0
    unit_offset_sd: float = 0.0
    relative: bool = False

    def __post_init__(self):
        _check(_is_num(self.scale) and self.scale > 0 and math.isfinite(self.scale), self.op,
               f"scale is {self.scale!r}: expected a positive number")
        _check(_is_num(self.offset) and math.isfinite(self.offset), self.op, f"offset is {self.offset!r}: expected a finite number")
        _check(_is_num(self.unit_offset_sd) and self.unit_offset_sd >= 0 and math.isfinite(self.unit_offset_sd),
               self.op, f"unit_offset_sd is {self.unit_offset_sd!r}: expected a number >= 0")
        _check(isinstance(self.relative, bool), self.op, f"relative is {self.relative!r}: expected true or false")

    def apply(self, rec, rng):
        x = _values(rec) * float(self.scale)
        unit = float(np.nanstd(x)) if self.relative else 1.0
        shift = float(self.offset) * unit
        if self.unit_offset_sd > 0:
            shift = shift + rng.normal(0.0, self.unit_offset_sd * unit, size=x.shape[2])
        return rebuild(rec, x + shift)


TRANSFORMS: dict[str, type[Transform]] = {
    t.op: t
    for t in (
        KeepUnits,
        KeepSessions,
        DropAreas,
        KeepStimuli,
        GaussianNoise,
        PoissonCounts,
        Calcium,
        TrialVariability,
        UnitLoss,
        ScaleOffset,
    )
}


def parse_step(spec: dict | Transform) -> Transform:
    """A spec dict ``{"op": name, **params}`` (or a ready transform) -> the transform; unknown
    ops, unknown parameters and bad values raise :class:`VirtualSpecError` saying which."""
    if isinstance(spec, Transform):
        return spec
    if not isinstance(spec, dict):
        raise VirtualSpecError(f"step {spec!r}: expected a dict with an 'op' key")
    if "op" not in spec:
        raise VirtualSpecError(f"step {spec!r}: missing 'op' (one of {sorted(TRANSFORMS)})")
    op = spec["op"]
    cls = TRANSFORMS.get(op)
    if cls is None:
        raise VirtualSpecError(f"unknown op {op!r}: expected one of {sorted(TRANSFORMS)}")
    params = {k: v for k, v in spec.items() if k != "op"}
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(params) - known)
    if unknown:
        raise VirtualSpecError(f"{op}: unknown parameter(s) {unknown}: expected some of {sorted(known)}")
    # JSON has no tuples: list-valued parameters (drop_areas' names, keep_stimuli's range) as tuples
    params = {k: tuple(v) if isinstance(v, list) else v for k, v in params.items()}
    return cls(**params)
