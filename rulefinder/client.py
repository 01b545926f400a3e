"""The Python client of the rulefinder REST API.

    from rulefinder.client import Client
    client = Client("http://127.0.0.1:8000", api_key="rf_...")   # or RULEFINDER_API_KEY
    [result] = client.predict_files(["mouse1.npz"])
    print(result.top_rule, result.verdict, result.expected_accuracy)

Results are the shared :class:`~rulefinder.classify.result.PredictionResult`. Requests answered
429 (rate limit) or 503 are retried with exponential backoff (honouring ``Retry-After``); every
other error raises :class:`ApiError` (or a subclass) carrying the server's ``detail``. NWB session
files are reduced to the compact NPZ form here, before upload, so raw imaging never leaves the lab
(``reduce_nwb=False`` uploads the files as they are).
"""

from __future__ import annotations

import io
import os
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field

from rulefinder.classify.result import PredictionResult
from rulefinder.recording.summary import RecordingSummary
from rulefinder.vocabulary import DEFAULT_NOISE

__all__ = [
    "ApiError",
    "AuthError",
    "Client",
    "ClientError",
    "ConnectionFailed",
    "NotFound",
    "PredictionFailed",
    "PredictionJob",
    "PredictionTimeout",
    "RateLimited",
    "UploadedRecording",
    "predict_paths",
]


class ClientError(Exception):
    """Base of every error the client raises."""


class ConnectionFailed(ClientError):
    """The server could not be reached."""


class ApiError(ClientError):
    """The server answered with an error status; ``detail`` is its message."""

    def __init__(self, status: int, detail: Any, method: str = "", url: str = ""):
        self.status = status
        self.detail = detail
        super().__init__(f"{method} {url} -> {status}: {detail}".strip())


class AuthError(ApiError):
    """401: missing, unknown or revoked API key."""


class NotFound(ApiError):
    """404: no such recording, prediction or model for this key."""


class RateLimited(ApiError):
    """429 still after every retry."""


class PredictionFailed(ClientError):
    def __init__(self, prediction_id: str, error: str | None):
        self.prediction_id = prediction_id
        self.error = error
        super().__init__(f"prediction {prediction_id} failed: {error}")


class PredictionTimeout(ClientError):
    pass


class UploadedRecording(BaseModel):
    """What the server keeps about an upload."""

    model_config = ConfigDict(extra="allow")

    id: str
    created: float
    format: str
    noise: str
    area_order: list[str] | None = None
    files: list[dict] = Field(default_factory=list)
    summary: RecordingSummary
    warnings: list[str] = Field(default_factory=list)


class PredictionJob(BaseModel):
    model_config = ConfigDict(extra="allow", protected_namespaces=())

    id: str
    status: Literal["queued", "running", "succeeded", "failed"]
    recording_ids: list[str] = Field(default_factory=list)
    model: str | None = None
    result: PredictionResult | None = None
    error: str | None = None


_ERRORS = {401: AuthError, 404: NotFound, 429: RateLimited}
_RETRY = {429, 503}


class Client:
    """A session with one server. ``api_key`` defaults to ``RULEFINDER_API_KEY`` (none: no auth header)."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        api_key: str | None = None,
        *,
        timeout: float = 120.0,
        max_retries: int = 6,
        backoff: float = 0.25,
        max_backoff: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ):
        if api_key is None:
            api_key = os.environ.get("RULEFINDER_API_KEY") or None
        self.base_url = base_url.rstrip("/")
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout, transport=transport)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- plumbing --------------------------------------------------------------------------
    def _request(self, method: str, path: str, *, files_factory=None, **kwargs) -> httpx.Response:
        for attempt in range(self.max_retries + 1):
            if files_factory is not None:
                kwargs["files"] = files_factory()  # bodies are re-built: a stream is read once
            try:
                resp = self._http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                raise ConnectionFailed(f"cannot reach {self.base_url}{path}: {exc}") from None
            finally:
                for _, (_, body, _) in kwargs.get("files") or []:
                    if hasattr(body, "close"):
                        body.close()
            if resp.status_code in _RETRY and attempt < self.max_retries:
                time.sleep(self._delay(resp, attempt))
                continue
            if resp.is_error:
                try:
                    detail = resp.json().get("detail", resp.text)
                except ValueError:
                    detail = resp.text or resp.reason_phrase
                raise _ERRORS.get(resp.status_code, ApiError)(resp.status_code, detail, method, f"{self.base_url}{path}")
            return resp
        raise AssertionError("unreachable")  # pragma: no cover

    def _delay(self, resp: httpx.Response, attempt: int) -> float:
        retry_after = resp.headers.get("retry-after", "")
        if retry_after.replace(".", "", 1).isdigit():
            return min(self.max_backoff, float(retry_after))
        return min(self.max_backoff, self.backoff * 2**attempt) * (0.5 + random.random() / 2)

    # -- resources -------------------------------------------------------------------------
    def health(self) -> dict:
        return self._request("GET", "/healthz").json()

    def rules(self, model: str = "default") -> list[dict]:
        return self._request("GET", "/v1/rules", params={"model": model}).json()

    def models(self) -> list[dict]:
        return self._request("GET", "/v1/models").json()["models"]

    def list_recordings(self) -> list[UploadedRecording]:
        data = self._request("GET", "/v1/recordings").json()
        return [UploadedRecording.model_validate(r) for r in data["recordings"]]

    def delete(self, recording_id: str) -> None:
        self._request("DELETE", f"/v1/recordings/{recording_id}")

    def upload(
        self,
        paths: str | Path | Sequence[str | Path],
        *,
        noise: str = DEFAULT_NOISE,
        area_order: Sequence[str] | None = None,
        reduce_nwb: bool = True,
    ) -> UploadedRecording:
        """Upload ONE recording: a ``.npz``, a ``.zarr.zip``, or the ``.nwb`` session files of one
        recording (a list of them, or their directory)."""
        from rulefinder.recording import group_inputs

        paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
        groups = group_inputs(paths)
        if len(groups) != 1:
            raise ClientError(f"upload takes one recording, got {len(groups)}: use predict_files for several")
        files = groups[0]
        parts = self._parts(files, area_order, reduce_nwb)
        data = {"noise": noise}
        if area_order:
            data["area_order"] = ",".join(area_order)
        resp = self._request("POST", "/v1/recordings", files_factory=parts, data=data)
        return UploadedRecording.model_validate(resp.json())

    def _parts(self, files: list[Path], area_order, reduce_nwb: bool):
        if reduce_nwb and all(str(p).lower().endswith(".nwb") for p in files):
            import numpy as np

            from rulefinder.recording import load_recording
            from rulefinder.recording.npz import recording_to_npz_arrays

            rec = load_recording(files, area_order=area_order)  # raises RecordingError locally, before any upload
            buf = io.BytesIO()
            np.savez_compressed(buf, **recording_to_npz_arrays(rec))
            name = (files[0].parent.name or "recording") + ".npz"
            payload = buf.getvalue()
            return lambda: [("files", (name, payload, "application/octet-stream"))]
        return lambda: [("files", (p.name, open(p, "rb"), "application/octet-stream")) for p in files]

    def predict(self, recording_ids: str | Sequence[str], model: str | None = None) -> PredictionJob:
        """Queue one prediction combining ``recording_ids`` into one verdict."""
        ids = [recording_ids] if isinstance(recording_ids, str) else list(recording_ids)
        body: dict[str, Any] = {"recording_ids": ids}
        if model is not None:
            body["model"] = model
        return PredictionJob.model_validate(self._request("POST", "/v1/predictions", json=body).json())

    def job(self, prediction_id: str, wait: float = 0.0) -> PredictionJob:
        """A prediction's state; ``wait`` > 0 long-polls: the server answers when it ends (<= 30 s)."""
        params = {"wait": min(30.0, wait)} if wait > 0 else None
        return PredictionJob.model_validate(self._request("GET", f"/v1/predictions/{prediction_id}", params=params).json())

    def wait(self, prediction_id: str, timeout: float = 600.0) -> PredictionResult:
        """Long-poll until the prediction finishes; its result, or PredictionFailed / PredictionTimeout."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            job = self.job(prediction_id, wait=max(0.0, min(30.0, left)))
            if job.status == "succeeded":
                return job.result
            if job.status == "failed":
                raise PredictionFailed(prediction_id, job.error)
            if time.monotonic() >= deadline:
                raise PredictionTimeout(f"prediction {prediction_id} still {job.status} after {timeout:g} s")

    def predict_files(
        self,
        paths: Sequence[str | Path],
        *,
        group: bool = False,
        model: str | None = None,
        noise: str = DEFAULT_NOISE,
        area_order: Sequence[str] | None = None,
        timeout: float = 600.0,
        reduce_nwb: bool = True,
    ) -> list[PredictionResult]:
        """Upload and predict. One result per recording in input order (``.npz`` / ``.zarr.zip``
        paths are one recording each; ``.nwb`` files given together, or a directory of them, one),
        or one combined result with ``group=True``."""
        from rulefinder.recording import group_inputs

        groups = group_inputs(list(paths) if not isinstance(paths, (str, Path)) else [paths])
        return self._predict_groups(groups, group, model, noise, area_order, timeout, reduce_nwb)

    def _predict_groups(self, groups, group, model, noise, area_order, timeout, reduce_nwb) -> list[PredictionResult]:
        ids = [self.upload(g, noise=noise, area_order=area_order, reduce_nwb=reduce_nwb).id for g in groups]
        jobs = [self.predict(ids, model)] if group else [self.predict(i, model) for i in ids]
        deadline = time.monotonic() + timeout
        return [self.wait(j.id, timeout=max(0.0, deadline - time.monotonic())) for j in jobs]


def predict_paths(
    server: str,
    groups: Sequence[Sequence[Path]],
    *,
    model: str | None = None,
    noise: str = DEFAULT_NOISE,
    area_order: Sequence[str] | None = None,
    group: bool = False,
    api_key: str | None = None,
) -> list[PredictionResult]:
    """``rulefinder predict --server URL``: recordings already grouped by ``group_inputs``."""
    with Client(server, api_key) as client:
        return client._predict_groups([list(g) for g in groups], group, model, noise, area_order, 600.0, True)
