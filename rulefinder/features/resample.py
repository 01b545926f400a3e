"""Trajectories onto a canonical grid of relative time.

A recording's sessions sit at arbitrary, irregular times ``t_0 < ... < t_{S-1}`` in any unit.
Only order and relative spacing carry meaning, so time is normalised to

    tau_i = (t_i - t_0) / (t_{S-1} - t_0)  in [0, 1]

and every per-session trajectory is linearly interpolated onto ``G`` evenly spaced points
``0, 1/(G-1), ..., 1``. Any S >= 2 works; sessions with a NaN value (an area with no unit
present in that session) are bridged from their neighbours.
"""

from __future__ import annotations

import numpy as np

DEFAULT_N_TIMES = 11


def canonical_grid(n_times: int = DEFAULT_N_TIMES) -> np.ndarray:
    if n_times < 2:
        raise ValueError(f"n_times is {n_times}: expected at least 2 grid points")
    return np.linspace(0.0, 1.0, n_times)


def relative_time(session_time: np.ndarray) -> np.ndarray:
    """``(t - t_0) / (t_last - t_0)`` along the last axis."""
    t = np.asarray(session_time, dtype=np.float64)
    span = t[..., -1:] - t[..., :1]
    return (t - t[..., :1]) / span


def segments(session_time: np.ndarray, n_times: int = DEFAULT_N_TIMES, rows: int = 1) -> np.ndarray:
    """For each grid point, the session j of its segment (tau_j <= g <= tau_{j+1}): ``(rows,
    n_times)``; linear interpolation reads sessions j and j + 1 only."""
    tau = np.broadcast_to(relative_time(session_time), (rows, np.shape(session_time)[-1]))
    s = tau.shape[1]
    grid = canonical_grid(n_times)
    return np.stack([np.clip(np.searchsorted(row, grid, side="right") - 1, 0, s - 2) for row in tau])


def resample(traj: np.ndarray, session_time: np.ndarray, n_times: int = DEFAULT_N_TIMES) -> np.ndarray:
    """Interpolate ``traj`` ``(R, S, F)`` given at ``session_time`` ``(S,)`` or ``(R, S)`` onto the
    canonical grid: returns ``(R, F, n_times)``."""
    r, s, f = traj.shape
    grid = canonical_grid(n_times)
    tau = np.broadcast_to(relative_time(session_time), (r, s))
    # Segment j(g) with tau_j <= g <= tau_{j+1}, weight of its right end.
    j = segments(session_time, n_times, r)
    left = np.take_along_axis(tau, j, axis=1)
    right = np.take_along_axis(tau, j + 1, axis=1)
    w = ((grid[None, :] - left) / (right - left))[:, :, None]  # (R, G, 1)
    a = np.take_along_axis(traj, j[:, :, None], axis=1)
    b = np.take_along_axis(traj, j[:, :, None] + 1, axis=1)
    out = a * (1.0 - w) + b * w  # (R, G, F)
    holes = np.isnan(traj).any(axis=1)  # (R, F)
    for ri, fi in zip(*np.nonzero(holes)):
        ok = ~np.isnan(traj[ri, :, fi])
        if ok.any():
            out[ri, :, fi] = np.interp(grid, tau[ri, ok], traj[ri, ok, fi])
        else:
            out[ri, :, fi] = 0.0
    return out.transpose(0, 2, 1)
