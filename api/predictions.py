"""``/v1/predictions``: queue a prediction over one or more recordings, poll for its result."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request

from api.auth import ApiError, current_owner
from api.schemas import ErrorResponse, PredictionJob, PredictionRequest, ValidationErrorResponse
from api.storage import JobRow
from rulefinder.classify.result import PredictionResult

router = APIRouter(prefix="/v1/predictions", tags=["predictions"])

COMMON = {
    401: {"model": ErrorResponse, "description": "Missing, unknown or revoked API key."},
    429: {"model": ErrorResponse, "description": "Rate limit exceeded; see Retry-After."},
}


def to_api(job: JobRow) -> PredictionJob:
    return PredictionJob(
        id=job.id,
        status=job.status,
        recording_ids=job.recording_ids,
        model=job.model,
        created=job.created,
        result=PredictionResult.model_validate(job.result) if job.result is not None else None,
        error=job.error,
    )


@router.post(
    "",
    status_code=202,
    response_model=PredictionJob,
    responses={
        **COMMON,
        404: {"model": ErrorResponse, "description": "A recording id or the model is unknown (for this API key)."},
        422: {"model": ValidationErrorResponse, "description": "The request body does not match the schema."},
    },
    summary="Queue a prediction over one or more recordings (combined into one verdict)",
)
async def create_prediction(
    request: Request, body: PredictionRequest, owner: Annotated[str, Depends(current_owner)]
) -> PredictionJob:
    storage = request.app.state.storage
    for rid in body.recording_ids:
        if storage.get_recording(owner, rid) is None:
            raise ApiError(404, f"recording {rid!r} not found")
    if len(set(body.recording_ids)) != len(body.recording_ids):
        raise ApiError(422, "recording_ids names a recording twice: expected distinct recordings")
    registry = request.app.state.registry
    name = body.model or "default"
    if name not in registry.names():
        raise ApiError(404, f"model {name!r} not found; registered: {', '.join(registry.names()) or '(none)'}")
    job = storage.add_job(owner, body.recording_ids, name)
    request.app.state.jobs.submit(job.id)
    return to_api(job)


@router.get(
    "/{prediction_id}",
    response_model=PredictionJob,
    response_model_exclude_none=True,
    responses={**COMMON, 404: {"model": ErrorResponse, "description": "No such prediction for this API key."}},
    summary="A prediction's status and, once it succeeded, its result",
)
async def get_prediction(
    request: Request,
    prediction_id: str,
    owner: Annotated[str, Depends(current_owner)],
    wait: Annotated[
        float,
        Query(ge=0, le=30, description="Long poll: answer as soon as the prediction ends, or after this many seconds."),
    ] = 0,
) -> PredictionJob:
    storage = request.app.state.storage
    job = storage.get_job(prediction_id, owner)
    if job is None:
        raise ApiError(404, f"prediction {prediction_id!r} not found")
    if wait > 0 and job.status in ("queued", "running"):
        await request.app.state.jobs.wait_for(prediction_id, wait)
        job = storage.get_job(prediction_id, owner)
        if job is None:  # deleted with its recording while we waited
            raise ApiError(404, f"prediction {prediction_id!r} not found")
    return to_api(job)
