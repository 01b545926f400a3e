"""The NumPy archive form (``.npz``) of a recording. Never unpickles: ``allow_pickle=False``."""

from __future__ import annotations

import io
import math
import tokenize
import warnings
from pathlib import Path

import numpy as np
import xarray as xr

from rulefinder.memory import keep_freed_memory
from rulefinder.recording.archive import check_declared_size, checked_members, open_zip, read_member
from rulefinder.recording.errors import RecordingError, RecordingWarning
from rulefinder.recording.model import make_recording
from rulefinder.settings import get_settings

KNOWN_KEYS = ("responses", "session_time", "unit_area", "area_order", "stimulus_id", "performance")
_NPY_MAGIC = b"\x93NUMPY"
_MAX_HEADER = 10_000  # numpy's own default bound on a .npy header
_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
# what numpy's .npy header parser (ast.literal_eval, then tokenize for Python-2 headers) raises
_NPY_HEADER_ERRORS = (ValueError, SyntaxError, TypeError, tokenize.TokenError, RecursionError, MemoryError)


def _parse_npy(raw: bytes, src: str, name: str, key: str) -> np.ndarray:
    """One ``.npy`` member's bytes as an array, with every header field checked first.

    numpy's header parser raises ``ValueError``, ``SyntaxError``, ``TypeError``,
    ``tokenize.TokenError`` (its Python-2 header filter) or ``RecursionError`` on a damaged
    header; the ``try`` wraps only that parser. The declared size is compared with the bytes
    present before anything is allocated, so a damaged shape cannot ask for terabytes.
    """
    fp = io.BytesIO(raw)
    if raw[: len(_NPY_MAGIC)] != _NPY_MAGIC:
        raise RecordingError(
            src, key, f"damaged archive: member {name!r} does not start with the .npy magic: expected a .npy array"
        )
    version = tuple(raw[len(_NPY_MAGIC) : len(_NPY_MAGIC) + 2])
    reader = _HEADER_READERS.get(version)
    if reader is None:
        raise RecordingError(
            src, key, f"member {name!r} is .npy format version {'.'.join(map(str, version))}: "
            "expected 1.0 or 2.0 (plain numeric or unicode arrays)"
        )
    fp.seek(len(_NPY_MAGIC) + 2)
    try:
        shape, fortran, dtype = reader(fp, max_header_size=_MAX_HEADER)
    except _NPY_HEADER_ERRORS as exc:
        raise RecordingError(
            src, key, f"damaged archive: member {name!r} has a corrupt .npy header ({type(exc).__name__}: {exc})"
        ) from exc
    if any(d < 0 for d in shape):
        raise RecordingError(
            src, key, f"damaged archive: member {name!r} declares shape {tuple(shape)}: expected sizes >= 0"
        )
    if dtype.hasobject:
        raise RecordingError(
            src, key, f"{key} is an object array: expected a numeric or unicode array "
            "(object arrays are never unpickled)"
        )
    if dtype.itemsize == 0:
        raise RecordingError(src, key, f"{key} has dtype {dtype} of item size 0: expected a numeric or unicode array")
    count = math.prod(shape)
    expected = count * dtype.itemsize
    found = len(raw) - fp.tell()
    if found != expected:
        raise RecordingError(
            src,
            key,
            f"damaged archive: member {name!r} declares shape {tuple(shape)} of {dtype} ({expected} bytes) "
            f"but holds {found} bytes of data",
        )
    flat = np.frombuffer(raw, dtype=dtype, count=count, offset=fp.tell())
    return flat.reshape(shape, order="F" if fortran else "C").copy()


def load_npz(path: str | Path, *, source: str | None = None) -> xr.DataArray:
    """Read a ``.npz`` recording. ``source`` names the file in messages (default: the path).

    The archive is read with :mod:`zipfile` and each member with numpy's ``.npy`` header
    parser, so that every way a damaged file fails is named (see ``archive.py``); nothing is
    ever unpickled.
    """
    keep_freed_memory()  # inflated arrays are MBs: reused, not page-faulted in anew
    path = Path(path)
    src = source or str(path)
    if path.is_file():
        with open(path, "rb") as f:
            if f.read(len(_NPY_MAGIC)) == _NPY_MAGIC:
                raise RecordingError(src, None, "holds a single .npy array: expected a .npz archive of named arrays")
    what = "a NumPy .npz archive (a zip of .npy arrays)"
    try:
        zf = open_zip(path, src, what)
    except RecordingError as exc:
        if exc.reason.startswith("cannot be read as a zip"):
            raise RecordingError(src, None, f"cannot be read as a NumPy .npz archive: {exc.reason}") from exc.__cause__
        raise
    with zf:
        check_declared_size(zf, src, get_settings().max_unpacked_bytes)
        members = [i for i in checked_members(zf, src) if not i.is_dir()]
        keys = [i.filename[: -len(".npy")] if i.filename.endswith(".npy") else i.filename for i in members]
        arrays = {}
        for info, key in zip(members, keys):
            if key not in KNOWN_KEYS:
                warnings.warn(
                    f"{src}: unknown key {key!r} ignored (known keys: {', '.join(KNOWN_KEYS)})",
                    RecordingWarning,
                    stacklevel=2,
                )
                continue
            arrays[key] = _parse_npy(read_member(zf, info, src), src, info.filename, key)
    if "responses" not in arrays:
        raise RecordingError(
            src, "responses", f"missing key 'responses': expected an array of shape (session, stimulus, unit); found keys {sorted(keys)}"
        )
    return make_recording(
        arrays["responses"],
        session_time=arrays.get("session_time"),
        unit_area=arrays.get("unit_area"),
        stimulus=arrays.get("stimulus_id"),
        performance=arrays.get("performance"),
        area_order=arrays.get("area_order"),
        source=src,
    )


def recording_to_npz_arrays(rec: xr.DataArray) -> dict[str, np.ndarray]:
    arrays = {
        "responses": rec.transpose("session", "stimulus", "unit").values.astype(np.float64),
        "session_time": rec.coords["session_time"].values.astype(np.float64),
        "unit_area": rec.coords["unit_area"].values.astype(str),
        "stimulus_id": rec.coords["stimulus"].values,
    }
    if arrays["stimulus_id"].dtype.kind not in "iuU":
        arrays["stimulus_id"] = arrays["stimulus_id"].astype(str)
    if "performance" in rec.coords:
        arrays["performance"] = rec.coords["performance"].values.astype(np.float64)
    if rec.attrs.get("area_order"):
        arrays["area_order"] = np.asarray(rec.attrs["area_order"], dtype=str)
    return arrays


def save_npz(rec: xr.DataArray, path: str | Path) -> Path:
    """Write ``rec`` as a compressed ``.npz`` (no object arrays, so it loads without pickle)."""
    path = Path(path)
    buf = io.BytesIO()
    np.savez_compressed(buf, **recording_to_npz_arrays(rec))
    path.write_bytes(buf.getvalue())
    return path
