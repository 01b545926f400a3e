"""``/v1/rules``: the learning-rule catalogue, read from a model's card (never from training_zoo)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request

from api.auth import ApiError
from api.schemas import ErrorResponse
from rulefinder.classify.card import RuleEntry
from rulefinder.classify.registry import ModelError, ModelNotFoundError

router = APIRouter(prefix="/v1/rules", tags=["rules"])


@router.get(
    "",
    response_model=list[RuleEntry],
    responses={
        404: {"model": ErrorResponse, "description": "No model of that name."},
        422: {"model": ErrorResponse, "description": "An invalid model name."},
    },
    summary="The rules a model knows (id, family, description, reference, variants)",
)
async def list_rules(
    request: Request, model: Annotated[str, Query(max_length=200, description="Model name.")] = "default"
) -> list[RuleEntry]:
    try:
        entry = request.app.state.registry.entry(model)
    except ModelNotFoundError as exc:
        raise ApiError(404, str(exc)) from None
    except ModelError as exc:
        raise ApiError(422, str(exc)) from None
    return entry.card.catalogue
