"""How a process that reads recordings or computes features uses the C allocator."""

from __future__ import annotations

import ctypes

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
MMAP_THRESHOLD_MAX = 32 * 2**20  # glibc's ceiling on 64-bit systems
_DONE = False


def keep_freed_memory() -> None:
    """Let glibc keep up to ``RULEFINDER_ALLOCATOR_KEEP_MB`` of freed memory for reuse (once
    per process; later calls do nothing).

    Loading a recording and computing its features allocate and free temporaries of a few MB
    (an inflated array, an area's block); by default glibc serves such blocks with fresh pages
    from the system (mmap, or the top of a heap it trims back after every free), so each
    prediction page-faulted ~2,000 times, ~4 ms of system CPU against ~30 ms of arithmetic.
    Kept for reuse, the process faults about never and its resident size stays at its peak
    (+4 MB measured over repeated predictions). No effect where the C library is not glibc
    (no ``mallopt``, or one that ignores these parameters)."""
    global _DONE
    if _DONE:
        return
    _DONE = True
    from rulefinder.settings import get_settings

    keep = get_settings().allocator_keep_mb * 2**20
    if keep <= 0:
        return
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError, TypeError):  # no C library handle, or no mallopt in it
        return
    mallopt(M_MMAP_THRESHOLD, min(keep, MMAP_THRESHOLD_MAX))
    mallopt(M_TRIM_THRESHOLD, keep)
