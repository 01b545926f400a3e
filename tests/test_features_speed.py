"""Process-level settings of the feature path that only change its speed."""

from __future__ import annotations

import ctypes

import pytest

from rulefinder.features import extractor
from rulefinder.settings import get_settings


class _Libc:
    def __init__(self, calls):
        self.calls = calls

    def mallopt(self, param, value):
        self.calls.append((param, value))
        return 1


@pytest.mark.parametrize(("keep_mb", "expected"), [
    ("32", [(extractor._M_MMAP_THRESHOLD, 32 * 2**20), (extractor._M_TRIM_THRESHOLD, 32 * 2**20)]),
    ("256", [(extractor._M_MMAP_THRESHOLD, 32 * 2**20), (extractor._M_TRIM_THRESHOLD, 256 * 2**20)]),
    ("0", []),
])
def test_allocator_keeps_freed_memory_as_the_setting_says(monkeypatch, keep_mb, expected):
    calls = []
    monkeypatch.setenv("RULEFINDER_ALLOCATOR_KEEP_MB", keep_mb)
    monkeypatch.setattr(ctypes, "CDLL", lambda name: _Libc(calls))
    get_settings.cache_clear()
    try:
        extractor._keep_freed_memory()
    finally:
        get_settings.cache_clear()
    assert calls == expected


def test_allocator_tuning_is_skipped_where_the_c_library_has_no_mallopt(monkeypatch):
    monkeypatch.setattr(ctypes, "CDLL", lambda name: object())
    extractor._keep_freed_memory()  # no AttributeError
