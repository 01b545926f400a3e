"""``/v1/models``: the model registry with each model's card."""

from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict

from rulefinder.classify.card import ModelCard

router = APIRouter(prefix="/v1/models", tags=["models"])


class ModelInfo(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    name: str
    sha256: str
    source: str
    card: ModelCard


class ModelList(BaseModel):
    models: list[ModelInfo]


@router.get("", response_model=ModelList, summary="Registered models and their cards")
async def list_models(request: Request) -> ModelList:
    entries = request.app.state.registry.entries()
    return ModelList(models=[ModelInfo(name=e.name, sha256=e.sha256, source=e.source, card=e.card) for e in entries])
