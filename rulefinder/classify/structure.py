"""Change-structure features: how an area's activity *changes* between sessions, and how that
change relates to the output area's change and to the next area's (hypotheses in
../shared/research/signatures.md).

For a recording with areas ordered input -> output, every area a gets, for each of
``WINDOWS`` windows of relative time (session pairs ``(b_k, b_{k+1})`` nearest to the window
edges), with H the area's responses (stimuli x units) and O the output area's, both divided by
their own root mean square over the recording and centred over stimuli:

* ``pr``: participation ratio of the change dH = H(b_{k+1}) - H(b_k), over min(stimuli, units)
  (how many directions the change uses);
* ``rel``: ||dH|| / ||H(b_k)|| (relative size of the change);
* ``r2_out``: leave-one-stimulus-out R² of dH predicted from dO by ridge regression (how much
  of the hidden change the output change explains; error-driven rules high, Hebbian low);
* ``align``: |cos| between that backward map (dO -> dH) and the forward read-out map
  (H(b_{k+1}) -> O(b_{k+1}), ridge), the "alignment" of feedback-alignment-like rules;
* ``stab``: cos between this window's backward map and the previous window's (fixed vs
  drifting feedback);
* ``auto``: cos between this window's dH and the previous window's (momentum-like smoothing);
* ``r2_next``: leave-one-stimulus-out R² of the next area's change from this area's.

Undefined values (the output area's own ``r2_out``, no next area, a window that collapses to
one session in a short recording) are NaN. Every quantity is a function of Frobenius norms,
cosines and hat matrices that a permutation of units or of stimuli leaves unchanged, and each
area is divided by its own scale, so the features are invariant to unit order, stimulus order
and the recording's scale.
"""

from __future__ import annotations

import warnings

import numpy as np
import xarray as xr

from rulefinder.features.resample import relative_time
from rulefinder.recording.model import DIMS, areas_of

#: Window edges in relative time (denser early, where most learning happens).
WINDOW_EDGES: tuple[float, ...] = (0.0, 0.05, 0.15, 0.3, 0.55, 1.0)
WINDOWS = len(WINDOW_EDGES) - 1
QUANTITIES: tuple[str, ...] = ("pr", "rel", "r2_out", "align", "stab", "auto", "r2_next")
_RIDGE = 0.1  # ridge strength relative to the mean eigenvalue of the regressor's Gram matrix
_EPS = 1e-12


def structure_feature_names() -> list[str]:
    return [f"s_{q}@w{k}" for q in QUANTITIES for k in range(WINDOWS)] + [f"s_{q}_mean" for q in QUANTITIES]


def _fill(x: np.ndarray) -> np.ndarray:
    """NaN (a unit absent in a session) -> that unit's mean response to the stimulus over the
    sessions where it was present, else 0."""
    if not np.isnan(x).any():
        return x
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices: filled with 0 below
        fill = np.nanmean(x, axis=0, keepdims=True)
    out = np.where(np.isnan(x), fill, x)
    return np.nan_to_num(out, nan=0.0)


def _scaled(x: np.ndarray) -> np.ndarray:
    rms = np.sqrt(np.mean(x**2))
    return x / rms if rms > _EPS else x


def _centre(m: np.ndarray) -> np.ndarray:
    return m - m.mean(axis=0, keepdims=True)


def _pr(d: np.ndarray) -> float:
    s = np.linalg.svd(_centre(d), compute_uv=False) ** 2
    total = s.sum()
    if total <= _EPS:
        return np.nan
    return float(total**2 / (s**2).sum() / min(d.shape))


def _ridge(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
    """Ridge map x -> y over stimuli (rows), centred, in the dual (stimulus) form so it costs
    K x K whatever the widths; returns (coefficients (x-cols, y-cols), LOO R²)."""
    x, y = _centre(x), _centre(y)
    k = x.shape[0]
    gram = x @ x.T
    lam = _RIDGE * max(np.trace(gram) / k, _EPS)
    inv = np.linalg.inv(gram + lam * np.eye(k))
    alpha = inv @ y
    coef = x.T @ alpha
    hat = gram @ inv
    resid = y - hat @ y
    denom = np.clip(1.0 - np.diag(hat), 1e-6, None)[:, None]
    loo = resid / denom
    ss = (y**2).sum()
    r2 = float(1.0 - (loo**2).sum() / ss) if ss > _EPS else np.nan
    return coef, max(r2, -1.0) if np.isfinite(r2) else np.nan


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na <= _EPS or nb <= _EPS:
        return np.nan
    return float((a.ravel() @ b.ravel()) / (na * nb))


def window_sessions(session_time: np.ndarray) -> list[tuple[int, int] | None]:
    """The session pair of each window (``None`` when the recording is too short for it)."""
    tau = relative_time(np.asarray(session_time, dtype=np.float64))
    edges = [int(np.argmin(np.abs(tau - e))) for e in WINDOW_EDGES]
    return [(a, b) if b > a else None for a, b in zip(edges[:-1], edges[1:], strict=True)]


def structure_features(rec: xr.DataArray) -> np.ndarray:
    """``(area, feature)`` change-structure features of one (valid) recording, areas in
    ``areas_of(rec)`` order, columns :func:`structure_feature_names`."""
    areas = areas_of(rec)
    order = list(rec.attrs.get("area_order") or areas)
    order = [a for a in order if a in areas]
    values = rec.transpose(*DIMS).values.astype(np.float64)
    ua = np.asarray(rec.coords["unit_area"].values).astype(str)
    blocks = {a: _scaled(_fill(values[:, :, ua == a])) for a in areas}
    out_area = order[-1]
    wins = window_sessions(rec.coords["session_time"].values)
    res = np.full((len(areas), len(QUANTITIES), WINDOWS), np.nan)
    for ai, a in enumerate(areas):
        h = blocks[a]
        pos = order.index(a)
        nxt = blocks[order[pos + 1]] if pos + 1 < len(order) else None
        o = blocks[out_area]
        prev_b = prev_d = None
        for k, w in enumerate(wins):
            if w is None:
                prev_b = prev_d = None
                continue
            s0, s1 = w
            dh = h[s1] - h[s0]
            q = res[ai, :, k]
            q[0] = _pr(dh)
            base = np.linalg.norm(_centre(h[s0]))
            q[1] = np.linalg.norm(_centre(dh)) / base if base > _EPS else np.nan
            b = None
            if a != out_area:
                do = o[s1] - o[s0]
                b, q[2] = _ridge(do, dh)  # (C, N)
                fwd, _ = _ridge(h[s1], o[s1])  # (N, C)
                q[3] = abs(_cos(b, fwd.T))
                if prev_b is not None:
                    q[4] = _cos(b, prev_b)
            if prev_d is not None:
                q[5] = _cos(_centre(dh), _centre(prev_d))
            if nxt is not None:
                _, q[6] = _ridge(dh, nxt[s1] - nxt[s0])
            prev_b, prev_d = b, dh
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an area with no defined window: NaN
        means = np.nanmean(res, axis=2)
    return np.concatenate([res.reshape(len(areas), -1), means], axis=1)
