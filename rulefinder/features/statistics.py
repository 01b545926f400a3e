"""Per-session statistics of one area, vectorised over a block of recordings.

Input: a block ``x`` of shape ``(R, S, K, N)`` (recordings, sessions, stimuli, units of one
area), float, NaN allowed. Output: ``(R, S, len(STAT_NAMES))``, one trajectory per statistic
per recording, in the recording's own sessions (resampling onto the canonical time grid is
``rulefinder.features.resample``).

Every statistic is a symmetric function of the units and of the stimuli of the area (sums,
order statistics, traces and Frobenius products of stimulus Gram matrices), so permuting units
within an area or permuting stimuli leaves it unchanged. Statistics that carry the recording's
unit are divided by the matching power of the area scale

    s = sqrt( mean_{session, stimulus, unit} x^2 )          (NaN ignored; s = 1 if s = 0)

computed over all sessions, so multiplying the recording by ``c > 0`` changes nothing: the
area's trajectory keeps its shape and loses only the arbitrary unit. Per row (one recording,
one session) and element set ``E`` (the ``K * N`` values, NaN dropped):

* Nayebi et al. (2020): for ``t`` in raw ``x``, ``|x|`` and ``x^2``: ``l2`` (root mean square,
  the L2 norm over ``sqrt(|E|)``, so that it does not grow with the number of units), ``mean``,
  ``median``, ``q3`` (third quartile, numpy's linear interpolation), ``var`` (population
  variance), ``skew`` = m3 / m2^1.5 and ``kurt`` = m4 / m2^2 - 3 (0 for a constant set).
  Central moments are computed about the row mean (shifted data) so that offset data (raw
  fluorescence) keeps its precision.
* ``selectivity``: mean over units of var_k(x) / mean_k(x^2), the stimulus-driven share of a
  unit's power (silent units skipped).
* ``lifetime_sparseness``: mean over units of 1 - (mean_k |x|)^2 / mean_k x^2 (Vinje & Gallant's
  sparseness on |x|, without the 1/(1 - 1/K) rescaling so that it needs no K).
* ``population_sparseness``: the same over units, averaged over stimuli.
* ``participation_ratio``: (tr C)^2 / ||C||_F^2 / min(K - 1, N) for the stimulus Gram matrix
  C = X_c X_c^T of the unit-centred stimulus x unit matrix: effective dimensionality as a
  fraction of the largest possible.
* ``cka_first`` / ``cka_last``: linear CKA <C_t, C_0>_F / (||C_t|| ||C_0||) between this
  session's representation and the first (last) session's: representational drift.
* ``dist_first`` / ``dist_last``: root mean square of x_t - x_0 (x_t - x_last) over the values
  present in both, divided by s: how far activity has moved.
"""

from __future__ import annotations

import numpy as np

TRANSFORMS = ("raw", "abs", "sq")
MOMENT_STATS = ("l2", "mean", "median", "q3", "var", "skew", "kurt")
NAYEBI_STATS = tuple(f"{t}_{s}" for t in TRANSFORMS for s in MOMENT_STATS)
EXTRA_STATS = (
    "selectivity",
    "lifetime_sparseness",
    "population_sparseness",
    "participation_ratio",
    "cka_first",
    "cka_last",
    "dist_first",
    "dist_last",
)
STAT_NAMES = NAYEBI_STATS + EXTRA_STATS

# Power of the area scale s each statistic carries (0: dimensionless).
_SCALE_POWER = {
    **{f"{t}_{s}": p * (2 if s == "var" else 1)
       for t, p in (("raw", 1), ("abs", 1), ("sq", 2))
       for s in ("l2", "mean", "median", "q3", "var")},
    "dist_first": 1,
    "dist_last": 1,
}
SCALE_POWER = np.array([_SCALE_POWER.get(n, 0) for n in STAT_NAMES], dtype=np.float64)

# A variance below this fraction of the mean square is rounding noise: the set is constant.
_CONSTANT_REL = 1e-12
# Below this many values per row a full sort is as cheap as two partitions and simpler.
_SORT_BELOW = 64


def area_scale(x: np.ndarray) -> np.ndarray:
    """Root mean square of each recording's block over all sessions, stimuli and units, (R,)."""
    r = x.shape[0]
    flat = x.reshape(r, -1)
    sq = np.einsum("ij,ij->i", np.nan_to_num(flat), np.nan_to_num(flat))
    cnt = (~np.isnan(flat)).sum(axis=1)
    s = np.sqrt(sq / np.maximum(cnt, 1))
    return np.where(s > 0, s, 1.0)


def _moments(v: np.ndarray, mask: np.ndarray | None, cnt: np.ndarray):
    """Mean, central m2, m3, m4 of each row of ``v`` (NaN already zeroed where ``mask`` False)."""
    mu = v.sum(axis=1) / cnt
    d = v - mu[:, None]
    if mask is not None:
        d[~mask] = 0.0
    d2 = d * d
    m2 = d2.sum(axis=1) / cnt
    m3 = np.einsum("ij,ij->i", d2, d) / cnt
    m4 = np.einsum("ij,ij->i", d2, d2) / cnt
    return mu, m2, m3, m4


def _shape_stats(mu, m2, m3, m4):
    """(l2, mean, var, skew, kurt) from the mean and central moments; guarded for constants."""
    ms = m2 + mu * mu
    const = m2 <= _CONSTANT_REL * ms
    safe = np.where(const, 1.0, m2)
    skew = np.where(const, 0.0, m3 / safe**1.5)
    kurt = np.where(const, 0.0, m4 / (safe * safe) - 3.0)
    return np.sqrt(ms), mu, m2, skew, kurt


def _order_stats(v: np.ndarray, mask: np.ndarray | None, qs=(0.5, 0.75)):
    """For each row and quantile q: (lo, hi, w), the two order statistics around position
    q (n - 1) and the interpolation weight, so that the quantile of any monotone transform g
    (numpy's ``linear`` method) is g(lo) (1 - w) + g(hi) w."""
    rows, n = v.shape
    lo = np.empty((len(qs), rows))
    hi = np.empty((len(qs), rows))
    w = np.empty((len(qs), rows))
    nan_rows = np.zeros(rows, bool) if mask is None else ~mask.all(axis=1)
    full = np.flatnonzero(~nan_rows)
    if full.size:
        pos = np.array([q * (n - 1) for q in qs])
        i_lo = np.floor(pos).astype(int)
        i_hi = np.minimum(i_lo + 1, n - 1)
        w[:, full] = (pos - i_lo)[:, None]
        sub = v[full]
        if n < _SORT_BELOW or len(qs) != 2 or i_lo[1] < i_hi[0]:
            srt = np.sort(sub, axis=1)
            for j in range(len(qs)):
                lo[j, full] = srt[:, i_lo[j]]
                hi[j, full] = srt[:, i_hi[j]]
        else:
            # Partition at the upper median index: everything before it is <= it, so the lower
            # median is the max of that prefix. The third quartile lies in the upper part:
            # partition that again (half the size) the same way. Two selections, no sort.
            part = np.partition(sub, i_hi[0], axis=1)
            hi[0, full] = part[:, i_hi[0]]
            lo[0, full] = part[:, : i_hi[0]].max(axis=1) if i_hi[0] > i_lo[0] else part[:, i_lo[0]]
            upper = part[:, i_hi[0]:]
            k_hi, k_lo = i_hi[1] - i_hi[0], i_lo[1] - i_hi[0]
            upart = np.partition(upper, k_hi, axis=1)
            hi[1, full] = upart[:, k_hi]
            lo[1, full] = upart[:, k_lo:k_hi].max(axis=1) if k_hi > k_lo else upart[:, k_lo]
    bad = np.flatnonzero(nan_rows)
    if bad.size:
        srt = np.sort(np.where(mask[bad], v[bad], np.nan), axis=1)  # NaN sort last
        cnt = mask[bad].sum(axis=1)
        for j, q in enumerate(qs):
            pos = q * (cnt - 1)
            il = np.floor(pos).astype(int)
            ih = np.minimum(il + 1, cnt - 1)
            lo[j, bad] = np.take_along_axis(srt, il[:, None], axis=1)[:, 0]
            hi[j, bad] = np.take_along_axis(srt, ih[:, None], axis=1)[:, 0]
            w[j, bad] = pos - il
    return lo, hi, w


def _interp(lo, hi, w):
    return lo * (1.0 - w) + hi * w


def session_statistics(x: np.ndarray) -> np.ndarray:
    """Statistics of every session of every recording of a block, ``(R, S, len(STAT_NAMES))``.

    ``x`` is ``(R, S, K, N)`` for one area. Rows are computed independently of each other, so a
    recording gives the same numbers alone or inside any block.
    """
    x = np.ascontiguousarray(x, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return _session_statistics(x)


def _session_statistics(x: np.ndarray) -> np.ndarray:
    r, s, k, n = x.shape
    rows = x.reshape(r * s, k * n)
    row_sum = rows.sum(axis=1)
    if np.isnan(row_sum).any():
        mask = ~np.isnan(rows)
        cnt = mask.sum(axis=1).astype(np.float64)
        v = np.where(mask, rows, 0.0)
    else:
        mask = None
        cnt = np.full(r * s, float(k * n))
        v = rows

    out = np.empty((r * s, len(STAT_NAMES)))
    col = {name: i for i, name in enumerate(STAT_NAMES)}

    a = np.abs(v)
    q = v * v
    lo_raw, hi_raw, w_raw = _order_stats(v, mask)
    lo_abs, hi_abs, w_abs = _order_stats(a, mask)
    quant = {
        "raw": (_interp(lo_raw, hi_raw, w_raw)),
        "abs": (_interp(lo_abs, hi_abs, w_abs)),
        "sq": (_interp(lo_abs**2, hi_abs**2, w_abs)),
    }
    for name, vals in (("raw", v), ("abs", a), ("sq", q)):
        l2, mean, var, skew, kurt = _shape_stats(*_moments(vals, mask, cnt))
        for stat, val in (("l2", l2), ("mean", mean), ("var", var), ("skew", skew), ("kurt", kurt)):
            out[:, col[f"{name}_{stat}"]] = val
        out[:, col[f"{name}_median"]] = quant[name][0]
        out[:, col[f"{name}_q3"]] = quant[name][1]

    # Per-unit and per-stimulus summaries: shape (rows, K, N).
    v3 = v.reshape(r * s, k, n)
    a3 = a.reshape(r * s, k, n)
    q3 = q.reshape(r * s, k, n)
    m3 = None if mask is None else mask.reshape(r * s, k, n)
    for axis, name in ((1, "unit"), (2, "stimulus")):
        c = float(v3.shape[axis]) if m3 is None else m3.sum(axis=axis).astype(np.float64)
        ms = q3.sum(axis=axis) / c
        ma = a3.sum(axis=axis) / c
        live = ms > 0  # silent units / stimuli and empty (all-NaN) ones are skipped
        sparse = np.where(live, 1.0 - ma * ma / np.where(live, ms, 1.0), np.nan)
        if name == "unit":
            mean = v3.sum(axis=1) / c
            var = np.maximum(ms - mean * mean, 0.0)
            sel = np.where(live, var / np.where(live, ms, 1.0), np.nan)
            out[:, col["selectivity"]] = _nanmean_rows(sel)
            out[:, col["lifetime_sparseness"]] = _nanmean_rows(sparse)
            unit_mean = np.where(np.isfinite(mean), mean, 0.0)
        else:
            out[:, col["population_sparseness"]] = _nanmean_rows(sparse)

    # Stimulus Gram matrices of the unit-centred responses (missing values sit at the unit mean).
    xc = v3 - unit_mean[:, None, :]
    if m3 is not None:
        xc[~m3] = 0.0
    gram = np.matmul(xc, xc.transpose(0, 2, 1))  # (rows, K, K)
    tr = np.trace(gram, axis1=1, axis2=2)
    g = gram.reshape(r, s, k * k)
    fro2 = np.einsum("rsi,rsi->rs", g, g)
    fro = np.sqrt(fro2).reshape(r * s)
    live = fro > 0
    out[:, col["participation_ratio"]] = np.where(
        live, tr * tr / np.where(live, fro2.reshape(r * s), 1.0), 0.0
    ) / min(k - 1, n)
    fro_rs = fro.reshape(r, s)
    for name, ref in (("cka_first", 0), ("cka_last", s - 1)):
        inner = np.einsum("rsi,ri->rs", g, g[:, ref])
        den = fro_rs * fro_rs[:, ref : ref + 1]
        out[:, col[name]] = np.where(den > 0, inner / np.where(den > 0, den, 1.0), 0.0).reshape(-1)

    # Distance travelled from the first session and still to go to the last.
    xs = x.reshape(r, s, k * n)
    for name, ref in (("dist_first", 0), ("dist_last", s - 1)):
        diff = xs - xs[:, ref : ref + 1]
        if mask is None:
            ms = np.einsum("rsi,rsi->rs", diff, diff) / (k * n)
        else:
            both = ~np.isnan(diff)
            dz = np.where(both, diff, 0.0)
            nb = both.sum(axis=2)
            # No value present in both sessions (every unit lost): no evidence of movement, 0.
            ms = np.where(nb > 0, np.einsum("rsi,rsi->rs", dz, dz) / np.maximum(nb, 1), 0.0)
        out[:, col[name]] = np.sqrt(ms).reshape(-1)

    if mask is not None:
        # An area may miss a whole session (all its units lost there): no statistics, NaN,
        # bridged by the resampling onto the time grid.
        out[cnt == 0] = np.nan
    out = out.reshape(r, s, len(STAT_NAMES))
    scale = area_scale(x)
    out /= scale[:, None, None] ** SCALE_POWER[None, None, :]
    return out


def _nanmean_rows(a: np.ndarray) -> np.ndarray:
    """Mean of each row over its finite entries; 0 for a row with none."""
    ok = np.isfinite(a)
    n = ok.sum(axis=1)
    tot = np.where(ok, a, 0.0).sum(axis=1)
    return np.where(n > 0, tot / np.maximum(n, 1), 0.0)
