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
  Central moments are computed in float64 about each set's own mean so that offset data
  (raw fluorescence) keeps its precision; quantiles come from one float32 sort of x / s.
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

Degenerate sets are defined, never divided by zero: a constant set has skew = kurt = 0, silent
units and stimuli are skipped, a session without stimulus structure has PR = CKA = 0, and
values at rounding level of the row's scale are exact zeros (so that summation order cannot
move them and break the invariances).
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
# Dimensionless statistics below this are rounding noise around an exact 0.
_ZERO_SNAP = 1e-9
# Values per chunk of row-local work: two 64 x 256 sessions, a few hundred kB per temporary.
_CHUNK_VALUES = 2 * 16384


def area_scale(x: np.ndarray) -> np.ndarray:
    """Root mean square of each recording's block over all sessions, stimuli and units, (R,)."""
    flat = x.reshape(x.shape[0], -1)
    ok = ~np.isnan(flat)
    if ok.all():  # nothing lost: the same numbers without the masked copy
        s = np.sqrt(_rowdot(flat, flat) / max(flat.shape[1], 1))
    else:
        z = np.where(ok, flat, 0.0)
        s = np.sqrt(_rowdot(z, z) / np.maximum(ok.sum(axis=1), 1))
    return np.where(s > 0, s, 1.0)


def _shape_stats(mu, m2, m3, m4):
    """(l2, mean, var, skew, kurt) from the mean and central moments; guarded for constants."""
    ms = m2 + mu * mu
    const = m2 <= _CONSTANT_REL * ms
    safe = np.where(const, 1.0, m2)
    skew = np.where(const, 0.0, m3 / safe**1.5)
    kurt = np.where(const, 0.0, m4 / (safe * safe) - 3.0)
    # Values this close to 0 are rounding noise of an exactly symmetric (mesokurtic) set: 0,
    # so that they cannot break the invariances by changing with the summation order.
    skew = np.where(np.abs(skew) < _ZERO_SNAP, 0.0, skew)
    kurt = np.where(np.abs(kurt) < _ZERO_SNAP, 0.0, kurt)
    return np.sqrt(ms), mu, m2, skew, kurt


def _rowdot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Dot product of matching rows (batched BLAS dot: faster than einsum here)."""
    return np.matmul(a[:, None, :], b[:, :, None])[:, 0, 0]


def _take(srt: np.ndarray, idx: np.ndarray) -> np.ndarray:
    return np.take_along_axis(srt, idx[:, None], axis=1)[:, 0].astype(np.float64)


def _abs_kth(srt: np.ndarray, neg: np.ndarray, cnt: np.ndarray, k: np.ndarray) -> np.ndarray:
    """k-th smallest (0-based) |x| of each row, from the row sorted ascending (``srt``) with
    ``neg`` negative values: |x| is the merge of A = -srt[neg-1], -srt[neg-2], ... and
    B = srt[neg], srt[neg+1], ..., both ascending. Binary search on i, the number of the
    first k + 1 merged values taken from A (vectorised over rows; no second sort)."""
    n_b = cnt - neg
    lo = np.maximum(0, k + 1 - n_b)
    hi = np.minimum(k + 1, neg)
    top = srt.shape[1] - 1

    def a_at(i):  # A[i], +inf past the end
        return np.where(i < neg, -_take(srt, np.clip(neg - 1 - i, 0, top)), np.inf)

    def b_at(j):  # B[j], -inf before the start
        return np.where(j >= 0, _take(srt, np.clip(neg + j, 0, top)), -np.inf)

    while (lo < hi).any():
        mid = (lo + hi) // 2
        go_right = (lo < hi) & (b_at(k - mid) > a_at(mid))  # B[j-1] > A[i]: take more of A
        lo = np.where(go_right, mid + 1, lo)
        hi = np.where((lo < hi) & ~go_right, mid, hi)
    i = lo
    a_last = np.where(i > 0, -_take(srt, np.clip(neg - i, 0, top)), -np.inf)
    return np.maximum(a_last, b_at(k - i))


def _quantiles(srt: np.ndarray, cnt: np.ndarray, qs=(0.5, 0.75)):
    """Quantiles (numpy's ``linear`` method) of x, |x| and x^2 per row, from one ascending
    sort of x (missing values NaN, sorted last; ``cnt`` present per row): (3, len(qs), rows).
    The order statistics of x^2 are the squares of those of |x|."""
    last = np.maximum(cnt.astype(np.int64) - 1, 0)
    neg = (srt < 0).sum(axis=1)
    out = np.empty((3, len(qs), srt.shape[0]))
    for j, q in enumerate(qs):
        pos = q * last
        il = np.floor(pos).astype(np.int64)
        ih = np.minimum(il + 1, last)
        w = pos - il
        out[0, j] = _take(srt, il) * (1.0 - w) + _take(srt, ih) * w
        alo = _abs_kth(srt, neg, cnt.astype(np.int64), il)
        ahi = _abs_kth(srt, neg, cnt.astype(np.int64), ih)
        out[1, j] = alo * (1.0 - w) + ahi * w
        out[2, j] = alo * alo * (1.0 - w) + ahi * ahi * w
    return out


def session_statistics(x: np.ndarray, scale: np.ndarray | None = None) -> np.ndarray:
    """Statistics of every session of every recording of a block, ``(R, S, len(STAT_NAMES))``.

    ``x`` is ``(R, S, K, N)`` for one area. Rows are computed independently of each other, so a
    recording gives the same numbers alone or inside any block. ``scale`` (R,) is the area
    scale when ``x`` holds only some of the recordings' sessions (the first and the last among
    them: the ``*_first`` / ``*_last`` statistics refer to them); default: from ``x``.
    """
    x = np.ascontiguousarray(x, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return _session_statistics(x, scale)


def _row_moments(v, mask, cnt, row_sum, k, n, sums, mom, row_ms) -> None:
    """Row-local sums and moments of a chunk of rows, written into the given views.

    Per-unit (over stimuli) and per-stimulus (over units) sums of x, |x| and x^2 come from
    the values themselves, so that ratios such as (mean |x|)^2 / mean x^2 are exact where they
    should be (a single value, a constant magnitude). Moments are taken in float64 about each
    transform's own mean, so that offset or nearly constant sets keep their precision: x about
    its row mean c (y = x - c), x^2 about its row mean (f = x^2 - mean x^2), |x| about its
    mean on rows with both signs (on rows of one sign |x| is x or -x: the moments of x).
    Written: ``mom[t] = (mean, m2, m3, m4)`` per transform t, ``row_ms`` = mean x^2.
    """
    rows = v.shape[0]
    v3 = v.reshape(rows, k, n)
    q = v * v
    q3 = q.reshape(rows, k, n)
    sums["x"][0][:] = v3.sum(axis=1)
    sums["x"][1][:] = v3.sum(axis=2)
    sums["q"][0][:] = q3.sum(axis=1)
    sums["q"][1][:] = q3.sum(axis=2)
    row_ms[:] = sums["q"][1].sum(axis=1) / np.maximum(cnt, 1.0)  # 0 for an empty row
    # |x| is x on rows without a negative value (rectified activations: most of the zoo) and
    # -x on rows without a positive one; only rows with both signs need |x| itself.
    nonneg = v.min(axis=1) >= 0
    nonpos = np.zeros(rows, bool)
    nonpos[~nonneg] = v[~nonneg].max(axis=1) <= 0
    mixed = np.flatnonzero(~nonneg & ~nonpos)
    sign = np.where(nonpos, -1.0, 1.0)[:, None]
    sums["a"][0][:] = sums["x"][0] * sign
    sums["a"][1][:] = sums["x"][1] * sign
    sum_a = row_sum * sign[:, 0]
    if mixed.size:
        a = np.abs(v[mixed])
        a3 = a.reshape(mixed.size, k, n)
        sums["a"][0][mixed] = a3.sum(axis=1)
        sums["a"][1][mixed] = a3.sum(axis=2)
        sum_a[mixed] = sums["a"][1][mixed].sum(axis=1)

    c = row_sum / cnt
    y = v - c[:, None]
    if mask is not None:
        y *= mask
    y2 = y * y
    # The mean of y is 0 up to rounding of c (relative 1e-16): power sums from the second on.
    p2, p3, p4 = y2.sum(axis=1) / cnt, _rowdot(y, y2) / cnt, _rowdot(y2, y2) / cnt
    del y, y2
    f = q
    f -= row_ms[:, None]
    if mask is not None:
        f *= mask
    f2 = f * f
    mom["sq"][0] = row_ms
    mom["sq"][1] = f2.sum(axis=1) / cnt
    mom["sq"][2] = _rowdot(f, f2) / cnt
    mom["sq"][3] = _rowdot(f2, f2) / cnt
    del f, f2
    mom["raw"][:] = (c, p2, p3, p4)
    mom["abs"][:] = (np.where(nonpos, -c, c), p2, np.where(nonpos, -p3, p3), p4)
    if mixed.size:
        am = a
        cm = cnt[mixed]
        ca = sum_a[mixed] / cm
        am -= ca[:, None]
        if mask is not None:
            am *= mask[mixed]
        a2 = am * am
        mom["abs"][:, mixed] = (ca, a2.sum(axis=1) / cm, _rowdot(am, a2) / cm, _rowdot(a2, a2) / cm)


def _session_statistics(x: np.ndarray, scale: np.ndarray | None = None) -> np.ndarray:
    r, s, k, n = x.shape
    nrow = r * s
    rows = x.reshape(nrow, k * n)
    # Sums over units per stimulus, then per row: NaN anywhere in a row shows in its sum.
    stim_x = x.reshape(nrow, k, n).sum(axis=2)
    row_sum = stim_x.sum(axis=1)
    if np.isnan(row_sum).any():
        mask = ~np.isnan(rows)
        cnt = mask.sum(axis=1).astype(np.float64)
        v = np.where(mask, rows, 0.0)
        stim_x = v.reshape(nrow, k, n).sum(axis=2)
        row_sum = stim_x.sum(axis=1)
        m3 = mask.reshape(nrow, k, n)
        unit_cnt = m3.sum(axis=1).astype(np.float64)
        stim_cnt = m3.sum(axis=2).astype(np.float64)
    else:
        mask = None
        cnt = np.full(nrow, float(k * n))
        v = rows
        unit_cnt = np.full((nrow, n), float(k))
        stim_cnt = np.full((nrow, k), float(n))

    out = np.empty((nrow, len(STAT_NAMES)))
    col = {name: i for i, name in enumerate(STAT_NAMES)}

    # Row-local work goes in chunks of a few sessions so that its temporaries stay in cache.
    step = max(1, _CHUNK_VALUES // (k * n))
    sums = {key: (np.empty((nrow, n)), np.empty((nrow, k))) for key in ("x", "a", "q")}
    mom = {key: np.empty((4, nrow)) for key in ("raw", "abs", "sq")}
    row_ms = np.empty(nrow)
    for i0 in range(0, nrow, step):
        sl = slice(i0, min(i0 + step, nrow))
        _row_moments(v[sl], None if mask is None else mask[sl], cnt[sl], row_sum[sl], k, n,
                     {key: (val[0][sl], val[1][sl]) for key, val in sums.items()},
                     {key: val[:, sl] for key, val in mom.items()}, row_ms[sl])
    moments = {key: tuple(val) for key, val in mom.items()}

    # Quantiles from one float32 sort: exact order statistics of the values rounded to float32
    # (a relative change of at most 6e-8). numpy's sort is SIMD-vectorised and copes with the
    # ties of rectified activations, where introselect (np.partition) slows down tenfold.
    # Values are divided by the area scale s before rounding, so that c * x rounds exactly as
    # x does (up to a 1e-16 change in s): quantiles stay scale-invariant far below 1e-6.
    sum_sq = row_ms * cnt
    if scale is None:
        scale = np.sqrt(sum_sq.reshape(r, s).sum(axis=1) / np.maximum(cnt.reshape(r, s).sum(axis=1), 1.0))
        scale = np.where(scale > 0, scale, 1.0)
    inv = np.repeat(1.0 / scale, s)
    v32 = np.empty((nrow, k * n), np.float32)
    np.multiply(v if mask is None else np.where(mask, v, np.nan), inv[:, None], out=v32, casting="same_kind")
    v32.sort(axis=1)
    quant = _quantiles(v32, cnt)  # one vectorised search over all rows
    quant *= np.repeat(scale, s)[None, None, :] ** np.array([1, 1, 2])[:, None, None]
    del v32

    for ti, name in enumerate(TRANSFORMS):
        mean, p2, p3, p4 = moments[name]
        l2, mean, var, skew, kurt = _shape_stats(mean, np.maximum(p2, 0.0), p3, p4)
        for stat, val in (("l2", l2), ("mean", mean), ("var", var), ("skew", skew), ("kurt", kurt)):
            out[:, col[f"{name}_{stat}"]] = val
        out[:, col[f"{name}_median"]] = quant[ti, 0]
        out[:, col[f"{name}_q3"]] = quant[ti, 1]

    # Per-unit (over stimuli) and per-stimulus (over units) summaries.
    unit_mean = np.zeros((nrow, n))
    for ax, cn, name in ((0, unit_cnt, "unit"), (1, stim_cnt, "stimulus")):
        cs = np.where(cn > 0, cn, 1.0)
        mx = sums["x"][ax] / cs
        ma = sums["a"][ax] / cs
        ms = sums["q"][ax] / cs
        # Silent units / stimuli (mean square at rounding level of the row's) and empty
        # (all-NaN) ones are skipped; ratios at rounding level are exact zeros.
        live = (ms > _CONSTANT_REL * row_ms[:, None]) & (cn > 0)
        safe = np.where(live, ms, 1.0)
        sparse = 1.0 - ma * ma / safe
        sparse = np.where(live, np.where(sparse < _ZERO_SNAP, 0.0, sparse), np.nan)
        if name == "unit":
            var = ms - mx * mx
            var = np.where(var > _CONSTANT_REL * ms, var, 0.0)
            out[:, col["selectivity"]] = _nanmean_rows(np.where(live, var / safe, np.nan))
            out[:, col["lifetime_sparseness"]] = _nanmean_rows(sparse)
            unit_mean = np.where(cn > 0, mx, 0.0)
        else:
            out[:, col["population_sparseness"]] = _nanmean_rows(sparse)

    # Stimulus Gram matrices of the unit-centred responses, C = H V V^T H with H the centring
    # matrix over stimuli. Rows with missing values are centred on each unit's present values
    # first and the missing ones set to that mean (0 after centring), which H leaves alone.
    v3 = v.reshape(r * s, k, n)
    if mask is not None:
        bad = np.flatnonzero(cnt < k * n)
        m3 = mask[bad].reshape(-1, k, n)
        v3 = v3.copy()
        v3[bad] = np.where(m3, v3[bad] - unit_mean[bad][:, None, :], 0.0)
    gram = np.matmul(v3, v3.transpose(0, 2, 1))  # (rows, K, K)
    row_mean = gram.mean(axis=2, keepdims=True)
    gram -= row_mean
    gram -= row_mean.transpose(0, 2, 1)
    gram += row_mean.mean(axis=1, keepdims=True)
    tr = np.trace(gram, axis1=1, axis2=2)
    g = gram.reshape(r, s, k * k)
    fro2 = np.matmul(g[:, :, None, :], g[:, :, :, None])[..., 0, 0]  # (r, s)
    fro = np.sqrt(fro2).reshape(r * s)
    # No stimulus-driven structure (total centred variance at rounding level): PR and CKA 0.
    live = tr > _CONSTANT_REL * sum_sq
    out[:, col["participation_ratio"]] = np.where(
        live, tr * tr / np.where(live, fro2.reshape(r * s), 1.0), 0.0
    ) / min(k - 1, n)
    fro_rs = np.where(live, fro, 1.0).reshape(r, s)
    live_rs = live.reshape(r, s)
    for name, ref in (("cka_first", 0), ("cka_last", s - 1)):
        inner = np.matmul(g, g[:, ref, :, None])[..., 0]  # (r, s)
        ok = live_rs & live_rs[:, ref : ref + 1]
        cka = np.where(ok, inner / (fro_rs * fro_rs[:, ref : ref + 1]), 0.0)
        cka = np.where(np.abs(cka) < _ZERO_SNAP, 0.0, cka)  # >= 0 in exact arithmetic
        out[:, col[name]] = cka.reshape(-1)

    # Distance travelled from the first session and still to go to the last, over the values
    # present in both sessions (none in common: no evidence of movement, 0).
    xs = x.reshape(r, s, k * n)
    diff = np.empty((s, k * n))
    for name, ref in (("dist_first", 0), ("dist_last", s - 1)):
        ms = np.empty((r, s))
        for ri in range(r):
            np.subtract(xs[ri], xs[ri, ref], out=diff)
            if mask is None:
                ms[ri] = np.matmul(diff[:, None, :], diff[:, :, None])[:, 0, 0] / (k * n)
            else:
                both = ~np.isnan(diff)
                dz = np.where(both, diff, 0.0)
                nb = both.sum(axis=1)
                tot = np.matmul(dz[:, None, :], dz[:, :, None])[:, 0, 0]
                ms[ri] = np.where(nb > 0, tot / np.maximum(nb, 1), 0.0)
        out[:, col[name]] = np.sqrt(ms).reshape(-1)


    # Statistics that carry units and sit at rounding level of the row's root mean square
    # (a mean or median of an exactly symmetric set) are exact zeros: no summation order or
    # positive scale can then move them.
    row_rms = np.sqrt(row_ms)[:, None] ** SCALE_POWER[None, :]
    out[np.abs(out) < _ZERO_SNAP * 0.1 * row_rms] = 0.0
    if mask is not None:
        # An area may miss a whole session (all its units lost there): no statistics, NaN,
        # bridged by the resampling onto the time grid.
        out[cnt == 0] = np.nan
    out = out.reshape(r, s, len(STAT_NAMES))
    out /= scale[:, None, None] ** SCALE_POWER[None, None, :]
    return out


def _nanmean_rows(a: np.ndarray) -> np.ndarray:
    """Mean of each row over its finite entries; 0 for a row with none."""
    ok = np.isfinite(a)
    n = ok.sum(axis=1)
    tot = np.where(ok, a, 0.0).sum(axis=1)
    return np.where(n > 0, tot / np.maximum(n, 1), 0.0)
