"""The NumPy archive form (``.npz``) of a recording. Never unpickles: ``allow_pickle=False``."""

from __future__ import annotations

import io
import warnings
import zipfile
from pathlib import Path

import numpy as np
import xarray as xr

from rulefinder.recording.errors import RecordingError, RecordingWarning
from rulefinder.recording.model import make_recording

KNOWN_KEYS = ("responses", "session_time", "unit_area", "area_order", "stimulus_id", "performance")


def load_npz(path: str | Path, *, source: str | None = None) -> xr.DataArray:
    """Read a ``.npz`` recording. ``source`` names the file in messages (default: the path)."""
    path = Path(path)
    src = source or str(path)
    try:
        archive = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise RecordingError(src, None, "file not found") from None
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise RecordingError(
            src, None, f"cannot be read as a NumPy .npz archive: expected a zip of .npy arrays ({exc})"
        ) from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise RecordingError(src, None, "holds a single .npy array: expected a .npz archive of named arrays")
    with archive:
        arrays = {}
        for key in archive.files:
            if key not in KNOWN_KEYS:
                warnings.warn(
                    f"{src}: unknown key {key!r} ignored (known keys: {', '.join(KNOWN_KEYS)})",
                    RecordingWarning,
                    stacklevel=2,
                )
                continue
            try:
                arrays[key] = archive[key]
            except ValueError as exc:
                if "allow_pickle" in str(exc) or "Object arrays" in str(exc):
                    raise RecordingError(
                        src, key, f"{key} is an object array: expected a numeric or unicode array "
                        "(object arrays are never unpickled)"
                    ) from None
                raise RecordingError(src, key, f"{key} cannot be read: {exc}") from None
    if "responses" not in arrays:
        raise RecordingError(
            src, "responses", f"missing key 'responses': expected an array of shape (session, stimulus, unit); found keys {sorted(archive.files)}"
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
