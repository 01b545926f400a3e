"""Settings read from the environment, every name prefixed with ``RULEFINDER_``."""

from __future__ import annotations

import ipaddress
import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def _cores() -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cores, 64))


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RULEFINDER_", extra="ignore")

    data_dir: Path = Field(
        default=Path.home() / ".local" / "share" / "rulefinder",
        description="Server data and the model registry.",
    )
    auth: Literal["required", "off"] | None = Field(
        default=None,
        description="API keys required or not. Unset: off when the server binds to loopback (one "
        "local owner), required anywhere else; 'off' on a non-loopback host refuses to start.",
    )
    host: str = Field(default="127.0.0.1", description="Address `rulefinder serve` binds to.")
    port: int = Field(default=8000, ge=0, le=65535)
    api_key: str | None = Field(default=None, description="The client's (and `predict --server`'s) API key.")
    rate_limit_per_minute: float = Field(
        default=600.0, gt=0, description="Requests per minute per API key (burst: a tenth of a minute's worth, at least 10)."
    )
    retention_days: float = Field(
        default=30.0, ge=0, description="Uploads older than this are deleted with their predictions; 0 keeps them forever."
    )
    workers: int = Field(
        default_factory=_cores,
        ge=1,
        le=64,
        description="Prediction workers of the server (default: the CPU cores this process may use, at most 64).",
    )
    worker_pool: Literal["processes", "threads"] = Field(
        default="processes",
        description="'processes': predictions run in worker processes, each loading the model once "
        "(uses all cores; each holds its own model in memory); 'threads': in threads of the server "
        "process (one GIL shared with uploads and the event loop).",
    )
    max_upload_bytes: int = Field(
        default=2 * 1024**3, description="Largest accepted upload, compressed, in bytes."
    )
    max_unpacked_bytes: int = Field(
        default=4 * 1024**3,
        description="Largest decompressed size of a .zarr.zip; larger archives are rejected as zip bombs.",
    )
    max_zip_members: int = Field(default=200_000, description="Most members in a .zarr.zip.")
    nwb_read_timeout_s: float = Field(
        default=30.0,
        ge=0,
        allow_inf_nan=False,
        description="Seconds one .nwb session file may take to read, in a reader process that is killed "
        "after it (libhdf5 can loop forever on a damaged file); 0 reads in-process with no limit.",
    )
    allocator_keep_mb: int = Field(
        default=32,
        ge=0,
        le=1024,
        description="Freed memory (MiB) a process reading recordings or computing features keeps for reuse instead "
        "of returning it to the system (glibc's M_TRIM_THRESHOLD; arrays up to this size, at most 32, come from the heap: "
        "M_MMAP_THRESHOLD). A prediction allocates and frees temporaries of a few MB, and getting pages back "
        "from the system costs about a tenth of its CPU time. 0 leaves the C allocator as it is.",
    )


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and the addresses of the loopback range (127.0.0.0/8, ::1)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def effective_auth(settings: Settings) -> Literal["required", "off"]:
    """The auth mode the server runs with; refuses ``off`` anywhere but loopback.

    Off is only safe with one local owner: anything that can reach a non-loopback address could
    read and delete everybody's uploads.
    """
    loopback = is_loopback(settings.host)
    if settings.auth is None:
        return "off" if loopback else "required"
    if settings.auth == "off" and not loopback:
        raise ValueError(
            f"RULEFINDER_AUTH=off with host {settings.host!r}: expected auth 'required' on any "
            "address but loopback (127.0.0.1, ::1, localhost); create a key with `rulefinder keys create NAME`"
        )
    return settings.auth


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
