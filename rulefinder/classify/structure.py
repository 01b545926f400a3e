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

from rulefinder.features.extractor import _area_columns
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


def window_sessions(session_time: np.ndarray) -> list[tuple[int, int] | None]:
    """The session pair of each window (``None`` when the recording is too short for it)."""
    tau = relative_time(np.asarray(session_time, dtype=np.float64))
    edges = [int(np.argmin(np.abs(tau - e))) for e in WINDOW_EDGES]
    return [(a, b) if b > a else None for a, b in zip(edges[:-1], edges[1:], strict=True)]


def structure_features(rec: xr.DataArray) -> np.ndarray:
    """``(area, feature)`` change-structure features of one (valid) recording, areas in
    ``areas_of(rec)`` order, columns :func:`structure_feature_names`."""
    return structure_features_arrays(
        rec.transpose(*DIMS).values,
        np.asarray(rec.coords["unit_area"].values).astype(str),
        areas_of(rec),
        rec.attrs.get("area_order"),
        rec.coords["session_time"].values,
    )


def structure_features_arrays(values, unit_area, areas, area_order, session_time) -> np.ndarray:
    """:func:`structure_features` from a valid recording's arrays: ``values`` (session,
    stimulus, unit), ``unit_area`` (unit,), ``areas`` (:func:`areas_of` order), the
    recording's ``area_order`` (or None) and ``session_time``.

    The quantities of every window of every area are computed at once, batched over windows
    (``(W, K, K)`` stacks of stimulus Gram matrices) with one batched inverse for all the
    ridge regressions; the arithmetic per window is that of the definitions above."""
    order = [a for a in (area_order or areas) if a in areas]
    wins = window_sessions(session_time)
    valid = [k for k, w in enumerate(wins) if w is not None]
    res = np.full((len(areas), len(QUANTITIES), WINDOWS), np.nan)
    if valid:
        _windows(res, np.asarray(values, dtype=np.float64), np.asarray(unit_area).astype(str), areas, order,
                 [wins[k] for k in valid], np.asarray(valid))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an area with no defined window: NaN
        means = np.nanmean(res, axis=2)
    return np.concatenate([res.reshape(len(areas), -1), means], axis=1)


def _windows(res, values, unit_area, areas, order, pairs, valid) -> None:
    """Fill ``res[area, quantity, valid]`` (the windows ``valid`` with session ``pairs``)."""
    s0 = np.array([p[0] for p in pairs])
    s1 = np.array([p[1] for p in pairs])
    w = len(pairs)
    # Pairs (j - 1, j) of valid windows that follow each other: stab and auto compare them.
    chain = np.array([j for j in range(1, w) if valid[j - 1] == valid[j] - 1], dtype=int)
    out_area = order[-1]
    cols = dict(zip(areas, _area_columns(unit_area, areas), strict=True))
    has_nan = bool(np.isnan(values).any())
    dc, h1c = {}, {}
    grams, slots = [], {}
    for a in areas:
        x = values[:, :, cols[a]]
        if has_nan:
            x = _fill(x)
        rms = np.sqrt(np.mean(x**2))
        edges = x[np.concatenate([s0, s1])]
        if rms > _EPS:
            edges = edges / rms
        h0, h1 = _centre_stack(edges[:w]), _centre_stack(edges[w:])
        dc[a] = h1 - h0  # centring commutes with the difference
        gram_d = np.matmul(dc[a], dc[a].transpose(0, 2, 1))
        ai = areas.index(a)
        k, n = dc[a].shape[1:]
        ss = np.trace(gram_d, axis1=1, axis2=2)
        res[ai, 0, valid] = np.where(ss > _EPS, ss**2 / _nonzero(np.sum(gram_d**2, axis=(1, 2))) / min(k, n), np.nan)
        base = np.sqrt(np.sum(h0**2, axis=(1, 2)))
        res[ai, 1, valid] = np.where(base > _EPS, np.sqrt(ss) / np.where(base > _EPS, base, 1.0), np.nan)
        if len(order) > 1:  # this area's change regresses the next's, or the output's regresses it
            slots[("d", a)] = len(grams)
            grams.append(gram_d)
        h1c[a] = h1  # the output area's: the read-out's target
        if a != out_area:  # the forward read-out from this area to the output
            slots[("h1", a)] = len(grams)
            grams.append(np.matmul(h1, h1.transpose(0, 2, 1)))
    if not grams:
        return
    inv, lam = _ridge_inverse(np.concatenate(grams))
    part = {key: (inv[i * w : (i + 1) * w], lam[i * w : (i + 1) * w]) for key, i in slots.items()}

    out_inv, out_lam = part[("d", out_area)]
    h1c_out = h1c[out_area]
    for a in areas:
        if a == out_area:
            continue
        ai = areas.index(a)
        alpha = np.matmul(out_inv, dc[a])  # (W, K, N): backward map dO -> dH in dual form
        b = np.matmul(dc[out_area].transpose(0, 2, 1), alpha)  # (W, C, N)
        res[ai, 2, valid] = _loo_r2(alpha, out_inv, out_lam, dc[a])
        b_inv, _ = part[("h1", a)]
        fwd = np.matmul(h1c[a].transpose(0, 2, 1), np.matmul(b_inv, h1c_out))  # (W, N, C)
        res[ai, 3, valid] = np.abs(_cos_rows(b, fwd.transpose(0, 2, 1)))
        if chain.size:
            res[ai, 4, valid[chain]] = _cos_rows(b[chain], b[chain - 1])
    for a in areas:
        ai = areas.index(a)
        if chain.size:
            res[ai, 5, valid[chain]] = _cos_rows(dc[a][chain], dc[a][chain - 1])
        pos = order.index(a)
        if pos + 1 < len(order):
            d_inv, d_lam = part[("d", a)]
            y = dc[order[pos + 1]]
            res[ai, 6, valid] = _loo_r2(np.matmul(d_inv, y), d_inv, d_lam, y)


def _centre_stack(m: np.ndarray) -> np.ndarray:
    return m - m.mean(axis=1, keepdims=True)


def _nonzero(a: np.ndarray) -> np.ndarray:
    return np.where(a > 0, a, 1.0)


def _ridge_inverse(gram: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ridge over stimuli in the dual (stimulus) form, batched: for the Gram matrices ``gram``
    (B, K, K) of centred regressors x, ``(G + lam I)^-1`` and ``lam`` (B,). The map x -> y is
    ``x^T (G + lam I)^-1 y`` (K x K work whatever the widths) and the hat matrix
    ``G (G + lam I)^-1 = I - lam (G + lam I)^-1``."""
    k = gram.shape[-1]
    lam = _RIDGE * np.maximum(np.trace(gram, axis1=1, axis2=2) / k, _EPS)
    return np.linalg.inv(gram + lam[:, None, None] * np.eye(k)), lam


def _loo_r2(alpha: np.ndarray, inv: np.ndarray, lam: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Leave-one-stimulus-out R² of centred ``y`` (W, K, Q) from a ridge with ``inv`` = (G +
    lam I)^-1 and ``alpha`` = inv @ y: the residual y - hat y is lam alpha and the leverage
    1 - hat_ii is lam inv_ii. At least -1; NaN where y is 0."""
    resid = lam[:, None, None] * alpha
    denom = np.clip(lam[:, None] * np.diagonal(inv, axis1=1, axis2=2), 1e-6, None)[:, :, None]
    loo = resid / denom
    ss = np.sum(y**2, axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        r2 = np.where(ss > _EPS, 1.0 - np.sum(loo**2, axis=(1, 2)) / np.where(ss > _EPS, ss, 1.0), np.nan)
    return np.where(np.isfinite(r2), np.maximum(r2, -1.0), np.nan)


def _cos_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine between matching matrices of two stacks (NaN where either is 0)."""
    a = a.reshape(a.shape[0], -1)
    b = b.reshape(b.shape[0], -1)
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    ok = (na > _EPS) & (nb > _EPS)
    dot = np.matmul(a[:, None, :], b[:, :, None])[:, 0, 0]
    return np.where(ok, dot / np.where(ok, na * nb, 1.0), np.nan)
