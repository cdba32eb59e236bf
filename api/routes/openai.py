"""OpenAI-compatible endpoints over the queue: ``/v1/models``, ``/v1/chat/completions``,
``/v1/completions``, for the ``openai`` SDK and ``outlines.from_vllm`` unchanged. Each route
parses, calls ``api.openai.service``, and answers.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request, Response

from api.auth import CallerDep, authenticate
from api.deps import GatewayDep
from api.errors import ModelNotFound
from api.models import model_cards
from api.openai import service
from api.openai.requests import ChatRequest, CompletionRequest

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["openai"], dependencies=[Depends(authenticate)])


@router.get("/models")
async def list_models(request: Request) -> dict[str, Any]:
    """The models the worker pools serve now, as running workers announce them: base models and
    their LoRA adapters (with `parent`), each with its live worker count. A model whose pool is
    scaled to zero is not listed, but still takes jobs (STRUCTQ_MODEL, STRUCTQ_EXTRA_MODELS,
    and adapters announced within STRUCTQ_ADAPTER_TTL_S); they wait in its queue for a worker."""
    models = await model_cards(request.app.state.redis)
    return {"object": "list", "data": [models[name] for name in sorted(models)]}


@router.get("/models/{model:path}")
async def get_model(model: str, request: Request) -> dict[str, Any]:
    card = (await model_cards(request.app.state.redis)).get(model)
    if card is None:
        raise ModelNotFound(f"The model `{model}` is not served now.", param="model")
    return card


@router.post("/chat/completions", response_model=None)
async def chat_completions(
    body: ChatRequest, request: Request, gateway: GatewayDep, caller: CallerDep
) -> Response:
    """OpenAI's chat completions, with vLLM's extra sampling and structured-output fields."""
    return await service.complete(body, request, gateway, caller)


@router.post("/completions", response_model=None)
async def completions(
    body: CompletionRequest, request: Request, gateway: GatewayDep, caller: CallerDep
) -> Response:
    """OpenAI's (legacy) completions: a prompt or a list of prompts."""
    return await service.complete(body, request, gateway, caller)
