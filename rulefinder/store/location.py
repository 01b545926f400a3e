"""Where a store lives: local paths and fsspec URLs (``memory://``, ``s3://``, ``gs://``, ...).

A URL with a scheme goes through fsspec (``storage_options`` are passed to the filesystem,
e.g. ``{"anon": False, "endpoint_url": ...}`` for S3); a plain path (or ``file://``) uses
zarr's ``LocalStore``, which is faster than the fsspec wrapper.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

import fsspec
from zarr.abc.store import Store
from zarr.storage import FsspecStore, LocalStore


def is_local(url: str) -> bool:
    return "://" not in str(url) or str(url).startswith("file://")


def local_path(url: str) -> str:
    url = str(url)
    return url[len("file://") :] if url.startswith("file://") else url


def zarr_store(url: str, *, read_only: bool = False, storage_options: dict | None = None) -> Store:
    if is_local(url):
        return LocalStore(local_path(url), read_only=read_only)
    return FsspecStore.from_url(str(url), storage_options=_fs_options(storage_options), read_only=read_only)


def _fs_options(storage_options: dict | None) -> dict:
    # No directory-listing cache: other processes (Ray workers, other nodes) add shards and
    # feature groups while this one keeps its filesystem, and fsspec reuses one filesystem per
    # URL and options in a process; a cached listing of an object store hid every shard the
    # workers wrote from the driver (found by tests/test_pipeline_s3.py).
    return {"use_listings_cache": False, **(storage_options or {})}


def filesystem(url: str, storage_options: dict | None = None) -> tuple[Any, str]:
    if is_local(url):
        return fsspec.filesystem("file"), os.path.abspath(local_path(url))
    fs, path = fsspec.core.url_to_fs(str(url), **_fs_options(storage_options))
    return fs, path


def bytes_on_disk(url: str, storage_options: dict | None = None) -> int:
    """Total size of every object under the store (what a bill or a quota counts)."""
    if is_local(url):
        total = 0
        for root, _dirs, files in os.walk(local_path(url)):
            for name in files:
                try:
                    total += os.path.getsize(os.path.join(root, name))
                except OSError:  # a writer may replace a file while we walk
                    pass
        return total
    fs, path = filesystem(url, storage_options)
    return int(fs.du(path, total=True))


def read_root_json(url: str, storage_options: dict | None = None) -> dict | None:
    fs, path = filesystem(url, storage_options)
    try:
        return json.loads(fs.cat_file(f"{path}/zarr.json"))
    except FileNotFoundError:
        return None


def write_root_json(url: str, doc: dict, storage_options: dict | None = None) -> None:
    """Replace the root ``zarr.json`` in one step, so a concurrent reader never sees half of it.

    Local files go through a temporary file and ``os.replace`` (atomic on POSIX); object
    stores replace an object atomically on their own.
    """
    data = json.dumps(doc, indent=2).encode()
    if is_local(url):
        root = local_path(url)
        fd, tmp = tempfile.mkstemp(dir=root, prefix=".zarr.json.")
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, os.path.join(root, "zarr.json"))
        return
    fs, path = filesystem(url, storage_options)
    fs.pipe_file(f"{path}/zarr.json", data)
