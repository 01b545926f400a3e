"""Settings read from the environment, every name prefixed with ``RULEFINDER_``."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RULEFINDER_", extra="ignore")

    data_dir: Path = Field(
        default=Path.home() / ".local" / "share" / "rulefinder",
        description="Server data and the model registry.",
    )
    auth: str = Field(default="required", pattern="^(required|off)$")
    max_upload_bytes: int = Field(
        default=2 * 1024**3, description="Largest accepted upload, compressed, in bytes."
    )
    max_unpacked_bytes: int = Field(
        default=4 * 1024**3,
        description="Largest decompressed size of a .zarr.zip; larger archives are rejected as zip bombs.",
    )
    max_zip_members: int = Field(default=200_000, description="Most members in a .zarr.zip.")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
