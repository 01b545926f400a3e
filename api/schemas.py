"""Pydantic models of every request, response and error of the REST API."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from rulefinder.classify.result import PredictionResult
from rulefinder.recording.summary import RecordingSummary
from rulefinder.vocabulary import NOISE_LEVELS

NoiseLevel = Literal[tuple(NOISE_LEVELS)]  # type: ignore[valid-type]


class ErrorResponse(BaseModel):
    """Every 4xx (and the rare 5xx) answer."""

    detail: str = Field(description="What was wrong: the file, the field, what was expected and what was found.")


class ValidationErrorResponse(BaseModel):
    """A request whose JSON body or parameters do not match the schema (FastAPI's 422)."""

    detail: list[dict] | str


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    version: str
    auth: Literal["required", "off"]


class FileInfo(BaseModel):
    name: str = Field(description="The uploaded file's name (for display only; the format comes from the content).")
    sha256: str
    size: int


class Recording(BaseModel):
    """An uploaded recording."""

    id: str
    created: float = Field(description="Upload time, seconds since the Unix epoch (UTC).")
    format: Literal["npz", "zarr", "nwb"]
    noise: NoiseLevel
    area_order: list[str] | None = None
    files: list[FileInfo]
    summary: RecordingSummary
    warnings: list[str]


class RecordingList(BaseModel):
    recordings: list[Recording]


class PredictionRequest(BaseModel):
    model_config = ConfigDict(protected_namespaces=(), extra="forbid")

    recording_ids: list[str] = Field(
        min_length=1,
        max_length=100,
        description="Recordings to combine into one verdict (e.g. the animals of one experiment).",
    )
    model: str | None = Field(default=None, max_length=200, description="Registered model name; default: 'default'.")


class PredictionJob(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    id: str
    status: Literal["queued", "running", "succeeded", "failed"]
    recording_ids: list[str] = Field(default_factory=list)
    model: str | None = None
    created: float | None = None
    result: PredictionResult | None = None
    error: str | None = None


class RuleInfo(BaseModel):
    """One rule of a model's catalogue (from its model card)."""

    model_config = ConfigDict(extra="allow")

    id: str
    family: str
    description: str = ""
    reference: str = ""
