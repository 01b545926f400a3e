"""Process-level settings of the recording and feature paths that only change their speed."""

from __future__ import annotations

import ctypes

import pytest

from rulefinder import memory
from rulefinder.settings import get_settings


class _Libc:
    def __init__(self, calls):
        self.calls = calls

    def mallopt(self, param, value):
        self.calls.append((param, value))
        return 1


@pytest.fixture
def fresh(monkeypatch):
    """A process that has not tuned its allocator yet, with settings read anew."""
    monkeypatch.setattr(memory, "_DONE", False)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.mark.parametrize(("keep_mb", "expected"), [
    ("32", [(memory.M_MMAP_THRESHOLD, 32 * 2**20), (memory.M_TRIM_THRESHOLD, 32 * 2**20)]),
    ("256", [(memory.M_MMAP_THRESHOLD, 32 * 2**20), (memory.M_TRIM_THRESHOLD, 256 * 2**20)]),
    ("0", []),
])
def test_allocator_keeps_freed_memory_as_the_setting_says(monkeypatch, fresh, keep_mb, expected):
    calls = []
    monkeypatch.setenv("RULEFINDER_ALLOCATOR_KEEP_MB", keep_mb)
    monkeypatch.setattr(ctypes, "CDLL", lambda name: _Libc(calls))
    memory.keep_freed_memory()
    memory.keep_freed_memory()  # once per process
    assert calls == expected


def test_allocator_tuning_is_skipped_where_the_c_library_has_no_mallopt(monkeypatch, fresh):
    monkeypatch.setattr(ctypes, "CDLL", lambda name: object())
    memory.keep_freed_memory()  # no AttributeError


def test_reading_a_recording_tunes_the_allocator(monkeypatch, fresh, tmp_path):
    import numpy as np

    from rulefinder.recording import load_npz, make_recording, save_npz

    calls = []
    monkeypatch.setattr(ctypes, "CDLL", lambda name: _Libc(calls))
    load_npz(save_npz(make_recording(np.ones((3, 2, 2))), tmp_path / "r.npz"))
    assert [p for p, _ in calls] == [memory.M_MMAP_THRESHOLD, memory.M_TRIM_THRESHOLD]
