"""``/v1/recordings``: upload (streamed, validated, content-addressed), list, delete."""

from __future__ import annotations

import shutil
import threading
import time
import warnings
import zipfile
from pathlib import Path
from typing import Annotated

import xarray as xr
from fastapi import APIRouter, Depends, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from api.auth import ApiError, current_owner
from api.schemas import ErrorResponse, FileInfo, Recording, RecordingList
from api.storage import RecordingRow, StoredFile, recording_id
from api.uploads import SUFFIX, UploadError, parse_multipart, sniff_format
from rulefinder.recording import (
    RecordingError,
    RecordingWarning,
    load_npz,
    load_nwb,
    load_zarr_zip,
    summarize,
    validate_recording,
)
from rulefinder.recording.summary import RecordingSummary
from rulefinder.settings import get_settings
from rulefinder.vocabulary import DEFAULT_NOISE, NOISE_LEVELS

router = APIRouter(prefix="/v1/recordings", tags=["recordings"])

# warnings.catch_warnings swaps process-wide state: two threads recording warnings at once would
# lose or swap each other's. Loading one recording is short, so loads take turns.
_warnings_lock = threading.Lock()

UPLOAD_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["files"],
                "properties": {
                    "files": {
                        "type": "array",
                        "items": {"type": "string", "format": "binary"},
                        "description": "One .npz, one .zarr.zip, or the .nwb session files of one recording.",
                    },
                    "noise": {"type": "string", "enum": list(NOISE_LEVELS), "default": DEFAULT_NOISE},
                    "area_order": {
                        "type": "string",
                        "description": "Comma-separated areas from the input (sensory) side to the output side.",
                    },
                },
            }
        }
    },
}

ERRORS = {
    400: {"model": ErrorResponse, "description": "Malformed multipart body."},
    401: {"model": ErrorResponse, "description": "Missing, unknown or revoked API key."},
    413: {"model": ErrorResponse, "description": "Upload over RULEFINDER_MAX_UPLOAD_BYTES, or an archive that unpacks too large."},
    415: {"model": ErrorResponse, "description": "Not multipart/form-data, or a file that is no recording format."},
    422: {"model": ErrorResponse, "description": "A recording that breaks the format contract (the loader's message)."},
    429: {"model": ErrorResponse, "description": "Rate limit exceeded; see Retry-After."},
}


def _npz_guard(path: Path, name: str, limit: int) -> None:
    # numpy decompresses a member whole: bound the declared sizes (zipfile never inflates past
    # a member's declared size), so a zip bomb dressed as .npz is refused before any inflating.
    with zipfile.ZipFile(path) as zf:
        declared = sum(i.file_size for i in zf.infolist())
    if declared > limit:
        raise RecordingError(name, None, f"archive unpacks to {declared} bytes: expected at most {limit} (RULEFINDER_MAX_UNPACKED_BYTES)")


def load_files(
    fmt: str, paths: list[Path], names: list[str], area_order: list[str] | None, max_unpacked: int | None = None
) -> tuple[xr.DataArray, list[str]]:
    """Load one recording from stored or incoming files whose format is known from content."""
    max_unpacked = max_unpacked if max_unpacked is not None else get_settings().max_unpacked_bytes
    with _warnings_lock, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RecordingWarning)
        if fmt == "nwb":
            rec = load_nwb(paths, area_order=area_order, sources=names)
        else:
            if fmt == "npz":
                _npz_guard(paths[0], names[0], max_unpacked)
                rec = load_npz(paths[0], source=names[0])
            else:
                rec = load_zarr_zip(paths[0], source=names[0])
            if area_order is not None:
                rec = validate_recording(rec.assign_attrs(area_order=list(area_order)), names[0])
    return rec, [str(w.message) for w in caught if issubclass(w.category, RecordingWarning)]


def _to_api(row: RecordingRow) -> Recording:
    return Recording(
        id=row.id,
        created=row.created,
        format=row.format,
        noise=row.noise,
        area_order=row.area_order,
        files=[FileInfo(name=f.name, sha256=f.sha256, size=f.size) for f in row.files],
        summary=RecordingSummary.model_validate(row.summary),
        warnings=row.warnings,
    )


def _validate_fields(fields: dict[str, str]) -> tuple[str, list[str] | None]:
    unknown = sorted(set(fields) - {"noise", "area_order"})
    if unknown:
        raise UploadError(422, f"unknown form field {unknown[0]!r}: expected 'files', 'noise' or 'area_order'")
    noise = fields.get("noise", "").strip() or DEFAULT_NOISE
    if noise not in NOISE_LEVELS:
        raise UploadError(422, f"noise is {noise!r}: expected one of {', '.join(NOISE_LEVELS)}")
    area_order = None
    if fields.get("area_order", "").strip():
        area_order = [a.strip() for a in fields["area_order"].split(",") if a.strip()]
        if len(set(area_order)) != len(area_order):
            raise UploadError(422, f"area_order {fields['area_order']!r} names an area twice: expected distinct areas")
    return noise, area_order


@router.post(
    "",
    status_code=201,
    response_model=Recording,
    responses=ERRORS,
    openapi_extra={"requestBody": UPLOAD_BODY},
    summary="Upload one recording",
)
async def upload_recording(request: Request, owner: Annotated[str, Depends(current_owner)]) -> Recording:
    """Multipart upload: every file in a part named ``files`` (one ``.npz``, one ``.zarr.zip``, or
    several ``.nwb`` session files), optional fields ``noise`` and ``area_order``. The format is
    recognised from the bytes; nothing is stored unless the recording loads and validates."""
    storage = request.app.state.storage
    settings = request.app.state.settings
    limit = settings.max_upload_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"upload of {declared} bytes is over the limit of {limit} bytes (RULEFINDER_MAX_UPLOAD_BYTES)")
    incoming = storage.new_incoming_dir()
    handed_over = False
    try:
        try:
            parsed = await parse_multipart(request.headers.get("content-type"), request.stream(), incoming, limit)
            noise, area_order = _validate_fields(parsed.fields)
            if not parsed.files:
                raise UploadError(422, "no file in the upload: expected files in a multipart part named 'files'")
        except UploadError as exc:
            raise ApiError(exc.status, exc.detail) from None
        # The rest reads and writes files and SQLite: one trip to a worker thread keeps the event
        # loop free for other requests meanwhile.
        handed_over = True
        row = await run_in_threadpool(_store_upload, request.app.state, owner, parsed, noise, area_order, incoming)
        return _to_api(row)
    finally:
        if not handed_over:
            shutil.rmtree(incoming, ignore_errors=True)


def _store_upload(state, owner: str, parsed, noise: str, area_order: list[str] | None, incoming: Path) -> RecordingRow:
    """Recognise, load and validate a parsed upload, then store it: blobs first, then the row,
    so a recording row never points at missing bytes. Removes ``incoming`` in every case."""
    storage = state.storage
    try:
        try:
            formats = [sniff_format(f.path, f.filename) for f in parsed.files]
        except UploadError as exc:
            raise ApiError(exc.status, exc.detail) from None
        fmt = formats[0]
        if len(set(formats)) > 1 or (fmt != "nwb" and len(formats) > 1):
            found = ", ".join(f"{f.filename} ({k})" for f, k in zip(parsed.files, formats))
            raise ApiError(
                422,
                f"{len(formats)} files given for one recording ({found}): expected one .npz, one .zarr.zip, "
                "or several .nwb session files",
            )
        names = [f.filename for f in parsed.files]
        paths = []
        for i, f in enumerate(parsed.files):
            # The loaders and the libraries under them look at suffixes: name files by content.
            p = f.path.with_name(f"part{i}{SUFFIX[fmt]}")
            f.path.rename(p)
            f.path = p
            paths.append(p)
        try:
            rec, notes = load_files(fmt, paths, names, area_order, state.settings.max_unpacked_bytes)
        except RecordingError as exc:
            status = 413 if "expected at most" in exc.reason and "unpacks" in exc.reason else 422
            raise ApiError(status, str(exc)) from None
        label = names[0] if len(names) == 1 else f"{names[0]} (+{len(names) - 1} more .nwb files)"
        summary = summarize(rec, source=label, warnings=notes)
        files = [StoredFile(f.filename, f.sha256, f.size) for f in parsed.files]
        rid = recording_id(owner, files, noise, area_order)
        row = storage.add_recording(
            RecordingRow(
                id=rid,
                owner=owner,
                created=time.time(),
                format=fmt,
                noise=noise,
                area_order=area_order,
                summary=summary.model_dump(mode="json"),
                warnings=summary.warnings,
                files=files,
            ),
            blobs={f.sha256: f.path for f in parsed.files},
        )
        state.jobs.cache.put(owner, row.id, rec)
        return row
    finally:
        shutil.rmtree(incoming, ignore_errors=True)


@router.get(
    "",
    response_model=RecordingList,
    responses={k: ERRORS[k] for k in (401, 429)},
    summary="List your recordings, newest first",
)
async def list_recordings(
    request: Request,
    owner: Annotated[str, Depends(current_owner)],
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
) -> RecordingList:
    rows = request.app.state.storage.list_recordings(owner, limit=limit, offset=offset)
    return RecordingList(recordings=[_to_api(r) for r in rows])


NOT_FOUND = {404: {"model": ErrorResponse, "description": "No such recording for this API key."}}


@router.get(
    "/{recording_id}",
    response_model=Recording,
    responses={**{k: ERRORS[k] for k in (401, 429)}, **NOT_FOUND},
    summary="One of your recordings",
)
async def get_recording(
    request: Request, recording_id: str, owner: Annotated[str, Depends(current_owner)]
) -> Recording:
    row = request.app.state.storage.get_recording(owner, recording_id)
    if row is None:
        raise ApiError(404, f"recording {recording_id!r} not found")
    return _to_api(row)


@router.delete(
    "/{recording_id}",
    status_code=204,
    response_class=Response,
    responses={**{k: ERRORS[k] for k in (401, 429)}, **NOT_FOUND},
    summary="Delete a recording with its predictions",
)
async def delete_recording(request: Request, recording_id: str, owner: Annotated[str, Depends(current_owner)]) -> Response:
    if not request.app.state.storage.delete_recording(owner, recording_id):
        raise ApiError(404, f"recording {recording_id!r} not found")
    request.app.state.jobs.cache.drop(owner, recording_id)
    return Response(status_code=204)
