"""Reading zip archives (``.npz``, ``.zarr.zip``) with every failure of :mod:`zipfile` named.

A damaged archive (an interrupted copy, a bad disk, a partial upload) makes :mod:`zipfile`
and the decompressors under it raise many types: ``BadZipFile`` (bad CRC, bad header magic,
headers that disagree), ``zlib.error``, ``EOFError`` (compressed data ends early),
``NotImplementedError`` (a flipped version or method field), ``RuntimeError`` (a flipped
encryption flag), ``OSError``/``ValueError`` (offsets outside the file), ``lzma.LZMAError``.
Each ``try`` below wraps only the :mod:`zipfile` call, so these types can only come from the
archive, never from a bug of ours; they become a :class:`RecordingError` naming the file, the
member and what is wrong.
"""

from __future__ import annotations

import lzma
import struct
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path

from rulefinder.recording.errors import RecordingError

try:  # libdeflate inflates a whole member in one call, ~1.6x faster than zlib's stream (and its CRC is 10x faster)
    import deflate as _libdeflate
except ImportError:  # pragma: no cover - a core dependency; zlib's stream still works
    _libdeflate = None

# what zipfile and its decompressors raise on damaged bytes (see the module docstring)
ZIP_ERRORS = (
    zipfile.BadZipFile,
    zlib.error,
    lzma.LZMAError,
    EOFError,
    NotImplementedError,
    RuntimeError,
    OSError,
    ValueError,
)
_CHUNK = 1 << 20


def _reason(exc: BaseException) -> str:
    text = str(exc)
    if isinstance(exc, zipfile.BadZipFile):
        if text.startswith("Bad CRC-32"):
            return "bad CRC-32 checksum (the bytes were altered after writing)"
        if text.startswith("Bad magic number") and "central directory" in text:
            return "bad central directory entry (the archive's index is overwritten)"
        if text.startswith("Bad magic number"):
            return "bad local header magic (the member's header is overwritten or misplaced)"
        if text.startswith("File name in directory"):
            return "its local header disagrees with the central directory"
        if text.startswith("File is not a zip file"):
            return "no zip end-of-central-directory record (truncated, or not a zip at all)"
        return text
    if isinstance(exc, (zlib.error, lzma.LZMAError)):
        return f"compressed data is corrupt ({text})"
    if isinstance(exc, EOFError):
        return "compressed data ends early (truncated archive)"
    if isinstance(exc, NotImplementedError):
        return f"a header field names an unsupported zip feature ({text})"
    if isinstance(exc, RuntimeError) and "encrypted" in text:
        return "marked as encrypted (a flipped header flag?): expected plain members"
    return f"{type(exc).__name__}: {text}"


def open_zip(path: Path, src: str, what: str) -> zipfile.ZipFile:
    """Open ``path`` as a zip archive; ``what`` names the expected content in messages."""
    try:
        return zipfile.ZipFile(path)
    except FileNotFoundError:
        raise RecordingError(src, None, "file not found") from None
    except IsADirectoryError:
        raise RecordingError(src, None, f"is a directory: expected {what}") from None
    except ZIP_ERRORS as exc:
        raise RecordingError(
            src, None, f"cannot be read as a zip archive: expected {what}; damaged archive: {_reason(exc)}"
        ) from exc


def member_error(src: str, info: zipfile.ZipInfo, exc: BaseException) -> RecordingError:
    name = info.filename
    return RecordingError(src, name, f"damaged archive: zip member {name!r} is corrupt: {_reason(exc)}")


def check_declared_size(zf: zipfile.ZipFile, src: str, limit: int) -> int:
    """Refuse archives whose headers claim more than ``limit`` unpacked bytes in all."""
    declared = sum(i.file_size for i in zf.infolist())
    if declared > limit:
        raise RecordingError(
            src,
            None,
            f"zip unpacks to {declared} bytes: expected at most {limit} (RULEFINDER_MAX_UNPACKED_BYTES)",
        )
    return declared


def checked_members(zf: zipfile.ZipFile, src: str) -> list[zipfile.ZipInfo]:
    """The archive's members, refusing names a damaged central directory produces (empty, or
    holding control characters such as NUL, which no writer of recordings emits)."""
    infos = zf.infolist()
    for i, info in enumerate(infos):
        name = info.filename
        if not name:
            raise RecordingError(src, None, f"damaged archive: zip member {i} has an empty name")
        if any(ord(ch) < 32 for ch in name):
            raise RecordingError(
                src, name, f"damaged archive: zip member name {name!r} holds control characters"
            )
    return infos


def iter_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, src: str) -> Iterator[bytes]:
    """The decompressed bytes of one member, chunk by chunk; the CRC is checked at the end.

    Unpacking stops at the member's declared size whatever the compressed stream holds
    (zipfile's own bound), so callers that count the chunks bound the total.
    """
    try:
        fin = zf.open(info)
    except ZIP_ERRORS as exc:  # header checks: magic, names, flags, method
        raise member_error(src, info, exc) from exc
    with fin:
        while True:
            try:
                chunk = fin.read(_CHUNK)
            except ZIP_ERRORS as exc:  # decompression, early end, CRC at the end
                raise member_error(src, info, exc) from exc
            if not chunk:
                return
            yield chunk


def read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, src: str) -> bytes:
    """The decompressed bytes of one member, all at once (their size is bounded by the
    caller's ``check_declared_size``); the CRC is checked."""
    if _libdeflate is not None and info.compress_type in _WHOLE and zf.filename:
        return _whole_member(zf, info, src)
    return b"".join(iter_member(zf, info, src))


_LOCAL_HEADER = struct.Struct("<4s22xHH")  # magic ... file name length, extra field length
_WHOLE = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)


def _whole_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, src: str) -> bytes:
    """A stored or deflated member of an archive on disk, read in one call and (deflated)
    inflated by libdeflate in one call into exactly its declared size (a stream that would
    unpack to more fails: no zip bomb gets past the declared size); the CRC by libdeflate
    (a tenth of zlib's time). :mod:`zipfile` checks the member's local header first, so a
    damaged header fails as it does on the streaming path."""
    try:
        with zf.open(info):  # header checks: magic, names, flags, method, overlaps
            pass
        with open(zf.filename, "rb") as f:
            f.seek(info.header_offset)
            _, name_len, extra_len = _LOCAL_HEADER.unpack(f.read(_LOCAL_HEADER.size))
            f.seek(info.header_offset + _LOCAL_HEADER.size + name_len + extra_len)
            packed = f.read(info.compress_size)
    except ZIP_ERRORS as exc:
        raise member_error(src, info, exc) from exc
    except struct.error as exc:  # the file changed under us: the header is gone
        raise member_error(src, info, EOFError(str(exc))) from exc
    if info.compress_type == zipfile.ZIP_STORED:
        if len(packed) < min(info.compress_size, info.file_size):  # the file ends inside it
            raise member_error(src, info, EOFError())
        data = packed if len(packed) <= info.file_size else packed[: info.file_size]  # zipfile's bound
    else:
        try:
            data = _libdeflate.deflate_decompress(packed, info.file_size)
        except _libdeflate.DeflateError as exc:
            raise member_error(src, info, zlib.error(f"invalid deflate stream: {exc}")) from exc
    # A stream that ends before the declared size is judged by its CRC alone, as zipfile does.
    if _libdeflate.crc32(data) != info.CRC:
        raise member_error(src, info, zipfile.BadZipFile(f"Bad CRC-32 for file {info.filename!r}"))
    return data


__all__ = ["ZIP_ERRORS", "check_declared_size", "checked_members", "iter_member", "member_error", "open_zip", "read_member"]
