"""One entry point for every upload format, and the grouping of paths into recordings."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import xarray as xr

from rulefinder.recording.errors import RecordingError, RecordingWarning
from rulefinder.recording.npz import load_npz
from rulefinder.recording.nwb import load_nwb
from rulefinder.recording.zarr_zip import load_zarr_zip

FORMATS = {".npz": "npz", ".zarr.zip": "zarr", ".nwb": "nwb"}


def format_of(path: str | Path) -> str:
    name = str(path).lower().rstrip("/")
    for suffix, fmt in FORMATS.items():
        if name.endswith(suffix):
            return fmt
    raise RecordingError(
        str(path), None, "has an unknown extension: expected .npz, .zarr.zip or .nwb"
    )


def group_inputs(paths: Sequence[str | Path]) -> list[list[Path]]:
    """Split command-line paths into recordings.

    A ``.npz`` or ``.zarr.zip`` path is one recording; a directory of ``.nwb`` files, or the
    ``.nwb`` paths given together, is one recording. Mixing ``.nwb`` files with other paths
    is an error.
    """
    groups: list[list[Path]] = []
    nwb_files: list[Path] = []
    others: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            inner = sorted(p.glob("*.nwb"))
            if not inner:
                raise RecordingError(str(p), None, "directory holds no .nwb files: expected one .nwb file per session")
            groups.append(inner)
            continue
        fmt = format_of(p)
        if fmt == "nwb":
            nwb_files.append(p)
        else:
            others.append(p)
            groups.append([p])
    if nwb_files and (others or groups):
        raise RecordingError(
            str(nwb_files[0]),
            None,
            "is an .nwb file given together with other recordings: give the .nwb session files of "
            "one recording on their own (or a directory of them)",
        )
    if nwb_files:
        groups.append(nwb_files)
    return groups


def load_recording(
    paths: str | Path | Sequence[str | Path],
    *,
    area_order: Sequence[str] | None = None,
    sources: Sequence[str] | None = None,
) -> xr.DataArray:
    """Load one recording from a ``.npz``, a ``.zarr.zip``, or the ``.nwb`` files of its sessions.

    ``sources`` overrides the names used in error messages (the API passes upload names).
    """
    if isinstance(paths, (str, Path)):
        p = Path(paths)
        paths = sorted(p.glob("*.nwb")) if p.is_dir() else [p]
    paths = [Path(p) for p in paths]
    if not paths:
        raise RecordingError("<input>", None, "no files given")
    sources = list(sources) if sources is not None else [str(p) for p in paths]
    fmts = {format_of(s) for s in sources}
    if fmts == {"nwb"}:
        return load_nwb(paths, area_order=area_order, sources=sources)
    if len(paths) != 1:
        raise RecordingError(
            sources[0],
            None,
            f"{len(paths)} files given for one recording: expected one .npz, one .zarr.zip, or "
            "several .nwb session files",
        )
    fmt = fmts.pop()
    rec = load_npz(paths[0], source=sources[0]) if fmt == "npz" else load_zarr_zip(paths[0], source=sources[0])
    if area_order is not None:
        from rulefinder.recording.model import validate_recording

        rec = validate_recording(rec.assign_attrs(area_order=list(area_order)), sources[0])
    return rec


def load_recording_with_warnings(paths, **kwargs) -> tuple[xr.DataArray, list[str]]:
    """Like :func:`load_recording`, also returning the warnings raised while loading."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RecordingWarning)
        rec = load_recording(paths, **kwargs)
    return rec, [str(w.message) for w in caught if issubclass(w.category, RecordingWarning)]
