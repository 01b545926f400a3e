"""Mutation fuzzing of every loader: a damaged recording either loads and validates, or raises
``RecordingError`` naming the file; any other exception is a bug.

Valid recordings of every format (NPZ deflated and stored, ``.zarr.zip`` in Zarr formats 2
and 3, NWB directories of imaging with the cached schema and of spike units without it) are
damaged by bit flips, truncations, zeroed spans, duplicated spans and member swaps inside zip
archives (``tests/mutations.py``). The fast tier runs a few dozen derandomized cases; the
slow tier a few thousand. An NWB read that never finishes (a libhdf5 loop) is killed by the
loader after ``RULEFINDER_NWB_READ_TIMEOUT_S`` and must give a ``RecordingError`` too.
Crashes found along the way are pinned as ``@example``\\ s (their exact bytes depend on the
base files below, so explicit tests of each failure mode live in ``test_recording_errors.py``
too).
"""

from __future__ import annotations

import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from rulefinder.recording import (
    RecordingError,
    load_recording,
    make_recording,
    save_npz,
    save_zarr_zip,
    validate_recording,
    write_nwb_sessions,
)
from rulefinder.recording import nwb_reader
from rulefinder.recording.npz import recording_to_npz_arrays
from rulefinder.settings import get_settings
from tests.mutations import Mutation, apply_all, mutation_lists

ZIP_VARIANTS = {"npz": ("npz_deflated", "npz_stored"), "zarr": ("zarr2", "zarr3")}
NWB_VARIANTS = ("nwb_ophys_spec", "nwb_units_nospec")


def _settings(n: int, shrink: bool = True):
    phases = tuple(Phase) if shrink else tuple(p for p in Phase if p is not Phase.shrink)
    return settings(
        max_examples=n,
        phases=phases,  # shrinking an NWB case costs seconds per step: its tests report unshrunk
        derandomize=True,  # the same cases on every run: CI never flakes on a new find
        database=None,  # nothing written into the repository
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


def _base_recording():
    rng = np.random.default_rng(0)
    return make_recording(
        np.abs(rng.normal(size=(3, 4, 5))) * 3,
        unit_area=["a", "a", "b", "b", "b"],
        area_order=["a", "b"],
        performance=[0.2, 0.5, 0.9],
    )


class _Bases:
    """Base files by variant; prints short (hypothesis prints the arguments of a failing case)."""

    def __init__(self):
        self._files: dict[str, object] = {}

    def __getitem__(self, key):
        return self._files[key]

    def __setitem__(self, key, value):
        self._files[key] = value

    def __repr__(self) -> str:
        return "<base files>"


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    """Bytes of one small valid recording in every format (NWB: one entry per session file)."""
    root = tmp_path_factory.mktemp("fuzz-bases")
    rec = _base_recording()
    out = _Bases()
    out["npz_deflated"] = save_npz(rec, root / "d.npz").read_bytes()
    np.savez(root / "s.npz", **recording_to_npz_arrays(rec))
    out["npz_stored"] = (root / "s.npz").read_bytes()
    out["zarr2"] = save_zarr_zip(rec, root / "a.zarr.zip", zarr_format=2).read_bytes()
    out["zarr3"] = save_zarr_zip(rec, root / "b.zarr.zip", zarr_format=3).read_bytes()
    ophys = write_nwb_sessions(rec, root / "ophys", kind="ophys", cache_spec=True)
    units = write_nwb_sessions(rec, root / "units", kind="units", cache_spec=False)
    out["nwb_ophys_spec"] = [p.read_bytes() for p in ophys]
    out["nwb_units_nospec"] = [p.read_bytes() for p in units]
    return out


def _loads_or_fails_cleanly(paths, source: str) -> None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rec = load_recording(paths)
    except RecordingError as exc:
        assert source in str(exc), str(exc)
        return
    # a damage the formats cannot see (a timestamp, an unused byte) must still give a valid recording
    validate_recording(rec)


def _check_zip(bases, variant: str, muts: list[Mutation]) -> None:
    suffix = ".npz" if variant.startswith("npz") else ".zarr.zip"
    with tempfile.TemporaryDirectory(prefix="rf-fuzz-") as tmp:
        path = Path(tmp) / f"damaged{suffix}"
        path.write_bytes(apply_all(bases[variant], muts))
        _loads_or_fails_cleanly(path, str(path))


# libhdf5 can loop forever on a damaged file (e.g. nwb_ophys_spec, which=1,
# [Mutation("zero", 10038, 2320)]: a variable-length string attribute whose global heap was
# zeroed). The loader reads NWB files in a reader process that it kills after
# RULEFINDER_NWB_READ_TIMEOUT_S per file (rulefinder/recording/nwb_reader.py); here the limit
# is short so such a case costs seconds, long enough that an intact file on a loaded machine
# never reaches it.
NWB_CASE_SECONDS = 5


@pytest.fixture(scope="module")
def nwb_timeout():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RULEFINDER_NWB_READ_TIMEOUT_S", str(NWB_CASE_SECONDS))
        get_settings.cache_clear()
        yield NWB_CASE_SECONDS
    get_settings.cache_clear()


def _nwb_folder(tmp: str, bases, variant: str, which: int, muts: list[Mutation]) -> Path:
    files = bases[variant]
    which %= len(files)
    folder = Path(tmp)
    for i, data in enumerate(files):
        (folder / f"session{i:02d}.nwb").write_bytes(apply_all(data, muts) if i == which else data)
    return folder


def _check_nwb(bases, variant: str, which: int, muts: list[Mutation]) -> None:
    with tempfile.TemporaryDirectory(prefix="rf-fuzz-") as tmp:
        folder = _nwb_folder(tmp, bases, variant, which, muts)
        _loads_or_fails_cleanly(folder, str(folder))


def test_libhdf5_loop_on_a_damaged_nwb_file_is_a_recording_error(bases, nwb_timeout):
    """The hang found by the fuzz test: libhdf5 never returns in-process; the reader process
    is killed after the time limit and the file is named."""
    with tempfile.TemporaryDirectory(prefix="rf-fuzz-") as tmp:
        folder = _nwb_folder(tmp, bases, "nwb_ophys_spec", 1, [Mutation("zero", 10038, 2320)])
        t0 = time.monotonic()
        with pytest.raises(RecordingError) as info:
            load_recording(folder)
        message = str(info.value)
        assert str(folder / "session01.nwb") in message, message
        assert f"did not finish within {nwb_timeout} s" in message, message
        # it returns: the time limit plus at most one start of the reader process
        assert time.monotonic() - t0 < nwb_timeout + nwb_reader.STARTUP_LIMIT_S
        # and the next read gets a fresh reader
        (folder / "session01.nwb").write_bytes(bases["nwb_ophys_spec"][1])
        assert load_recording(folder).sizes["session"] == 3


# ---- fast tier: a few dozen cases ----


@pytest.mark.parametrize("variant", ZIP_VARIANTS["npz"])
@_settings(25)
@given(muts=mutation_lists(is_zip=True))
@example(muts=[Mutation("flip", 400, 3)])  # responses.npy's data: bad CRC (was zipfile.BadZipFile)
@example(muts=[Mutation("zero", 0, 3)])  # the first local header's magic (was BadZipFile "Bad magic number")
@example(muts=[Mutation("flip", 200, 1)])  # responses.npy's data: bad CRC
@example(muts=[Mutation("truncate", 120)])  # no central directory left
def test_damaged_npz(bases, variant, muts):
    _check_zip(bases, variant, muts)


@pytest.mark.parametrize("variant", ZIP_VARIANTS["zarr"])
@_settings(15)
@given(muts=mutation_lists(is_zip=True))
@example(muts=[Mutation("swap", 0, 1)])  # zarr3: a chunk under a zarr.json name: UnicodeDecodeError in zarr
@example(muts=[Mutation("swap", 1, 2)])  # zarr2: GroupNotFoundError
@example(muts=[Mutation("swap", 3, 7)])  # zarr3: another array's metadata: wrong dims
@example(muts=[Mutation("flip", 300, 5)])  # a stored member's bytes: bad CRC
def test_damaged_zarr_zip(bases, variant, muts):
    _check_zip(bases, variant, muts)


@pytest.mark.parametrize("variant", NWB_VARIANTS)
@_settings(4, shrink=False)
@given(which=st.integers(0, 2), muts=mutation_lists())
@example(which=0, muts=[Mutation("truncate", 50_000)])  # truncated HDF5
@example(which=1, muts=[Mutation("zero", 20_000, 4000)])  # hdmf raised TypeError (ophys), ConstructError (units)
@example(which=1, muts=[Mutation("zero", 10038, 2320)])  # ophys: libhdf5 looped forever (reader killed)
def test_damaged_nwb_directory(bases, nwb_timeout, variant, which, muts):
    _check_nwb(bases, variant, which, muts)


# ---- slow tier: a few thousand cases ----


@pytest.mark.slow
@pytest.mark.parametrize("variant", ZIP_VARIANTS["npz"])
@_settings(900)
@given(muts=mutation_lists(is_zip=True))
def test_damaged_npz_many(bases, variant, muts):
    _check_zip(bases, variant, muts)


@pytest.mark.slow
@pytest.mark.parametrize("variant", ZIP_VARIANTS["zarr"])
@_settings(400)
@given(muts=mutation_lists(is_zip=True))
def test_damaged_zarr_zip_many(bases, variant, muts):
    _check_zip(bases, variant, muts)


@pytest.mark.slow
@pytest.mark.parametrize("variant", NWB_VARIANTS)
@_settings(50, shrink=False)
@given(which=st.integers(0, 2), muts=mutation_lists())
def test_damaged_nwb_directory_many(bases, nwb_timeout, variant, which, muts):
    _check_nwb(bases, variant, which, muts)


# ---- the command line on damaged files: exit 2, one line per recording, no traceback ----


def test_cli_on_damaged_files_exits_2_with_one_line_each(bases, tmp_path):
    import subprocess
    import sys

    npz = tmp_path / "bad.npz"
    npz.write_bytes(apply_all(bases["npz_deflated"], [Mutation("flip", 400, 3)]))
    zarr = tmp_path / "bad.zarr.zip"
    zarr.write_bytes(apply_all(bases["zarr3"], [Mutation("truncate", 500)]))
    folder = tmp_path / "nwb"
    folder.mkdir()
    for i, data in enumerate(bases["nwb_units_nospec"]):
        (folder / f"s{i}.nwb").write_bytes(data[: len(data) // 2] if i == 1 else data)
    cli = [sys.executable, "-m", "rulefinder.cli"]
    root = Path(__file__).resolve().parents[1]

    proc = subprocess.run([*cli, "inspect", npz, zarr, folder], capture_output=True, text=True, cwd=root)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 3 and all(line.startswith("error: ") for line in lines), proc.stderr
    assert str(npz) in lines[0] and "bad CRC-32" in lines[0]
    assert str(zarr) in lines[1] and str(folder / "s1.nwb") in lines[2]

    proc = subprocess.run([*cli, "reduce", folder, "-o", tmp_path / "r.npz"], capture_output=True, text=True, cwd=root)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "truncated HDF5 file" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
