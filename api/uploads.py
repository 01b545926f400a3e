"""Streaming multipart uploads to disk with a size limit, and recognising a file's format from its bytes.

FastAPI's ``UploadFile`` reads the whole body before the handler runs; here the body is parsed as
it arrives, every file part is written straight to ``incoming/`` while its SHA-256 is computed,
and the request is refused (413) the moment it passes ``RULEFINDER_MAX_UPLOAD_BYTES``.
"""

from __future__ import annotations

import hashlib
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import AsyncIterator, BinaryIO

from python_multipart.multipart import MultipartParser, parse_options_header

#: Most bytes of one form field (noise, area_order); fields are small.
MAX_FIELD_BYTES = 64 * 1024
MAX_PARTS = 1000

ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
SUFFIX = {"npz": ".npz", "zarr": ".zarr.zip", "nwb": ".nwb"}


class UploadError(Exception):
    """A bad upload: ``status`` is the HTTP status, the message the ``detail``."""

    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status = status
        self.detail = detail


@dataclass
class UploadedFile:
    filename: str
    path: Path
    size: int = 0
    sha256: str = ""
    format: str = ""


@dataclass
class ParsedUpload:
    files: list[UploadedFile] = field(default_factory=list)
    fields: dict[str, str] = field(default_factory=dict)


def _safe_filename(raw: str, index: int) -> str:
    # Only used in messages and listings: keep the base name, drop control characters.
    name = raw.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(c for c in name if c.isprintable())[:200]
    return name or f"file{index}"


async def parse_multipart(
    content_type: str | None, stream: AsyncIterator[bytes], dest: Path, max_bytes: int
) -> ParsedUpload:
    """Parse ``multipart/form-data`` from ``stream``; file parts named ``files`` go to ``dest``."""
    if not content_type:
        raise UploadError(415, "request has no Content-Type: expected multipart/form-data with a part named 'files'")
    ctype, params = parse_options_header(content_type)
    if ctype != b"multipart/form-data":
        raise UploadError(
            415, f"Content-Type is {ctype.decode('latin-1')!r}: expected multipart/form-data with a part named 'files'"
        )
    boundary = params.get(b"boundary")
    if not boundary:
        raise UploadError(400, "multipart/form-data without a boundary parameter")

    out = ParsedUpload()
    state: dict = {"headers": {}, "field": b"", "value": b"", "sink": None, "hasher": None, "name": None, "parts": 0}
    sink: list[BinaryIO | None] = [None]
    current: list[UploadedFile | None] = [None]
    buffer = bytearray()

    def on_part_begin() -> None:
        state["headers"] = {}
        state["parts"] += 1
        if state["parts"] > MAX_PARTS:
            raise UploadError(400, f"more than {MAX_PARTS} parts in the form")

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state["field"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        state["value"] += data[start:end]

    def on_header_end() -> None:
        # Raw bytes: parse_options_header round-trips them through latin-1, and names/filenames
        # are then decoded as UTF-8 (what browsers send).
        state["headers"][state["field"].decode("latin-1").lower()] = bytes(state["value"])
        state["field"] = b""
        state["value"] = b""

    def on_headers_finished() -> None:
        disp, opts = parse_options_header(state["headers"].get("content-disposition", b""))
        if disp != b"form-data" or b"name" not in opts:
            raise UploadError(400, "a form part has no Content-Disposition: form-data; name=...")
        name = opts[b"name"].decode("utf-8", "replace")
        state["name"] = name
        buffer.clear()
        if b"filename" in opts:
            if name != "files":
                raise UploadError(422, f"file part named {name!r}: expected every file in a part named 'files'")
            index = len(out.files)
            f = UploadedFile(_safe_filename(opts[b"filename"].decode("utf-8", "replace"), index), dest / f"part{index}")
            out.files.append(f)
            current[0] = f
            sink[0] = open(f.path, "wb")
            state["hasher"] = hashlib.sha256()
        else:
            current[0] = None
            sink[0] = None

    def on_part_data(data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        if sink[0] is not None:
            sink[0].write(chunk)
            state["hasher"].update(chunk)
            current[0].size += len(chunk)
        else:
            buffer.extend(chunk)
            if len(buffer) > MAX_FIELD_BYTES:
                raise UploadError(413, f"form field {state['name']!r} is over {MAX_FIELD_BYTES} bytes")

    def on_part_end() -> None:
        if sink[0] is not None:
            sink[0].close()
            current[0].sha256 = state["hasher"].hexdigest()
            sink[0] = None
        else:
            out.fields[state["name"]] = bytes(buffer).decode("utf-8", "replace")

    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": on_part_begin,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
        },
    )
    total = 0
    try:
        async for chunk in stream:
            total += len(chunk)
            if total > max_bytes:
                raise UploadError(413, f"upload is over the limit of {max_bytes} bytes (RULEFINDER_MAX_UPLOAD_BYTES)")
            parser.write(chunk)
        parser.finalize()
    except UploadError:
        raise
    except Exception as exc:  # python_multipart raises its own errors on malformed bodies
        if type(exc).__module__.startswith("python_multipart"):
            raise UploadError(400, f"malformed multipart/form-data body: {exc}") from None
        raise
    finally:
        if sink[0] is not None:
            sink[0].close()
    return out


def sniff_format(path: Path, filename: str) -> str:
    """``npz``, ``zarr`` or ``nwb`` from the file's bytes (the name is only used in messages)."""
    with open(path, "rb") as fh:
        head = fh.read(8)
    if not head:
        raise UploadError(422, f"{filename}: the file is empty: expected a .npz, .zarr.zip or .nwb recording")
    if head == HDF5_MAGIC:
        return "nwb"
    if head[:4] in ZIP_MAGIC:
        try:
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
            raise UploadError(422, f"{filename}: cannot be read as a zip archive: {exc}") from None
        leaves = {n.rstrip("/").rsplit("/", 1)[-1] for n in names}
        if leaves & {"zarr.json", ".zgroup", ".zarray"}:
            return "zarr"
        if names and all(n.endswith(".npy") for n in names):
            return "npz"
        raise UploadError(
            415,
            f"{filename}: a zip archive that is neither a .npz (members *.npy) nor a Zarr store "
            f"(zarr.json or .zgroup): found members {names[:5]}",
        )
    raise UploadError(
        415,
        f"{filename}: unrecognised content (starts with {head[:8]!r}): expected a .npz or .zarr.zip "
        "(zip archive) or an .nwb (HDF5) file",
    )
