"""The zipped Zarr form (``.zarr.zip``) of a recording.

Reading unpacks the archive into a private temporary folder first, member by member, with
every member checked (no absolute paths, no ``..``, no links) and the decompressed bytes
counted as they are written, so a zip bomb is stopped at the configured limit whatever its
headers claim.
"""

from __future__ import annotations

import shutil
import stat
import tempfile
import warnings
import zipfile
from pathlib import Path, PurePosixPath

import numpy as np
import xarray as xr

from rulefinder.memory import keep_freed_memory
from rulefinder.recording.archive import check_declared_size, checked_members, iter_member, open_zip
from rulefinder.recording.errors import RecordingError, library_errors
from rulefinder.recording.model import DIMS, make_recording
from rulefinder.settings import get_settings

# What zarr, its codecs and xarray raise on a store whose metadata or chunks are damaged
# (zarr.errors.BaseZarrError is a ValueError; JSON and UTF-8 decode errors are too). Only
# these types, and only when raised inside these packages, mean "damaged"; see library_errors.
ZARR_ERRORS = (ValueError, TypeError, KeyError, IndexError, RuntimeError, OSError)
ZARR_PACKAGES = ("zarr", "numcodecs", "xarray", "json", "pandas", "google_crc32c", "crc32c")
_STORE_MARKERS = ("zarr.json", ".zgroup", ".zattrs", ".zmetadata")


def _check_member(info: zipfile.ZipInfo, src: str) -> PurePosixPath:
    name = info.filename
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise RecordingError(src, name, f"zip member {name!r} is a link: expected plain files only")
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise RecordingError(
            src, name, f"zip member {name!r} has an absolute path: expected paths inside the store"
        )
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if ".." in parts:
        raise RecordingError(
            src, name, f"zip member {name!r} climbs out with '..': expected paths inside the store"
        )
    return PurePosixPath(*parts) if parts else PurePosixPath(".")


def safe_extract_zip(path: Path, dest: Path, src: str) -> None:
    """Unpack ``path`` into ``dest`` with the member and size checks described above."""
    settings = get_settings()
    zf = open_zip(path, src, "a zipped Zarr store (.zarr.zip)")
    with zf:
        infos = checked_members(zf, src)
        if len(infos) > settings.max_zip_members:
            raise RecordingError(
                src,
                None,
                f"zip has {len(infos)} members: expected at most {settings.max_zip_members}",
            )
        limit = settings.max_unpacked_bytes
        declared = check_declared_size(zf, src, limit)
        checked = [(_check_member(i, src), i) for i in infos]
        written = 0
        for rel, info in checked:
            target = dest.joinpath(*rel.parts)
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            if target.is_dir():
                # a damaged name can turn a member into the parent folder of another one
                raise RecordingError(
                    src, info.filename, f"damaged archive: zip member {info.filename!r} is both a file and a folder"
                )
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
            except (FileExistsError, NotADirectoryError):
                raise RecordingError(
                    src,
                    info.filename,
                    f"damaged archive: zip member {info.filename!r} lies under another member that is a file",
                ) from None
            with open(target, "wb") as fout:
                for chunk in iter_member(zf, info, src):
                    written += len(chunk)
                    if written > limit:
                        raise RecordingError(
                            src,
                            info.filename,
                            f"zip unpacks to more than {limit} bytes (headers claimed {declared}): "
                            "expected at most RULEFINDER_MAX_UNPACKED_BYTES",
                        )
                    fout.write(chunk)


def _find_store_root(root: Path, src: str) -> Path:
    candidates = sorted(
        (p.parent for m in _STORE_MARKERS for p in root.rglob(m)),
        key=lambda p: len(p.relative_to(root).parts),
    )
    if not candidates:
        raise RecordingError(
            src, None, "zip holds no Zarr store: expected zarr.json (format 3) or .zgroup (format 2)"
        )
    return candidates[0]


def load_zarr_zip(path: str | Path, *, source: str | None = None) -> xr.DataArray:
    """Read a ``.zarr.zip`` recording written by xarray (Zarr format 2 or 3)."""
    keep_freed_memory()
    path = Path(path)
    src = source or str(path)
    with tempfile.TemporaryDirectory(prefix="rulefinder-zarr-") as tmp:
        tmp_path = Path(tmp)
        safe_extract_zip(path, tmp_path, src)
        store = _find_store_root(tmp_path, src)
        damaged = library_errors(src, "damaged Zarr store", ZARR_ERRORS, ZARR_PACKAGES, hide=str(tmp_path))
        with damaged, warnings.catch_warnings():
            # a store without consolidated metadata is legal; reading it is just slower
            warnings.simplefilter("ignore", RuntimeWarning)
            ds = xr.open_zarr(store, consolidated=None, decode_times=False, chunks=None)
        with ds:
            if "responses" not in ds.data_vars:
                raise RecordingError(
                    src,
                    "responses",
                    f"missing variable 'responses': expected dims {DIMS}; found variables "
                    f"{sorted(map(str, ds.data_vars))}",
                )
            var = ds["responses"]
            if tuple(var.dims) != DIMS:
                raise RecordingError(
                    src, "responses", f"responses has dims {tuple(var.dims)}: expected {DIMS}"
                )
            # Metadata declares the shapes and chunks are filled in from the fill value where
            # missing, so a damaged shape would allocate without bound: check before loading.
            limit = get_settings().max_unpacked_bytes
            # A chunk is decoded into a buffer of its declared chunk shape: check that too.
            for name, v in [("responses", var), *var.coords.items()]:
                item = max(8, int(v.dtype.itemsize))  # float64 once loaded
                for what, shape in (("shape", v.shape), ("chunk shape", v.encoding.get("chunks") or ())):
                    declared = int(np.prod([int(n) for n in shape], dtype=np.float64)) * item if shape else 0
                    if declared > limit:
                        raise RecordingError(
                            src, str(name),
                            f"declares {what} {tuple(int(n) for n in shape)} ({declared} bytes), more than "
                            f"RULEFINDER_MAX_UNPACKED_BYTES ({limit}): a damaged or oversized store",
                        )
            with damaged:  # chunks are decoded here: codec errors, chunks of the wrong size
                var = var.load()

            def coord(name):
                return var.coords[name].values if name in var.coords else None

            area_order = var.attrs.get("area_order", ds.attrs.get("area_order"))
            unit = coord("unit")
            stim = coord("stimulus")
            unit_area = coord("unit_area")
            return make_recording(
                var.values,
                session_time=coord("session_time"),
                unit_area=unit_area,
                stimulus=stim,
                performance=coord("performance"),
                area_order=area_order,
                unit=unit,
                source=src,
                attrs={k: v for k, v in var.attrs.items() if k != "area_order"},
            )


def save_zarr_zip(rec: xr.DataArray, path: str | Path, *, zarr_format: int = 3) -> Path:
    """Write ``rec`` as a zipped Zarr store (format 3 by default, 2 on request)."""
    path = Path(path)
    ds = rec.to_dataset(name="responses")
    # JSON-like attributes travel with the recording (e.g. a virtual experiment's spec)
    attrs = {k: v for k, v in rec.attrs.items() if isinstance(v, (str, int, float, bool, list))}
    if attrs.get("area_order"):
        attrs["area_order"] = list(attrs["area_order"])
    else:
        attrs.pop("area_order", None)
    ds["responses"].attrs = attrs
    # variable-length strings have a Zarr v3 spec; fixed-width numpy unicode does not
    for name in ("unit_area", "stimulus", "unit"):
        if name in ds.coords and ds[name].dtype.kind == "U":
            ds[name] = ds[name].astype(object)
    with tempfile.TemporaryDirectory(prefix="rulefinder-zarr-") as tmp:
        store = Path(tmp) / "recording.zarr"
        ds.to_zarr(store, mode="w", zarr_format=zarr_format, consolidated=zarr_format == 2)
        tmp_zip = path.with_suffix(path.suffix + ".partial")
        with zipfile.ZipFile(tmp_zip, "w", compression=zipfile.ZIP_STORED) as zf:
            for f in sorted(store.rglob("*")):
                if f.is_file():
                    zf.write(f, f.relative_to(store).as_posix())
        shutil.move(tmp_zip, path)
    return path


__all__ = ["load_zarr_zip", "save_zarr_zip", "safe_extract_zip"]
