"""The OpenAI-compatible routes: `/v1/models` (and `/v1/models/{model}`),
`/v1/chat/completions`, `/v1/completions`."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import Response

from market.inference import service
from market.inference.auth import bearer_key
from market.inference.direct_route import DirectBodyRoute
from market.inference.schemas import ChatCompletionRequest, CompletionRequest
from market.runtime import Runtime

router = APIRouter(prefix="/v1", tags=["openai"], route_class=DirectBodyRoute)


# Dependencies as coroutines: FastAPI runs a plain `def` dependency in its thread pool,
# a thread hop per dependency per request for what is a dictionary lookup.
async def _runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


async def _key(authorization: Annotated[str | None, Header()] = None) -> str:
    return bearer_key(authorization)


RuntimeDep = Annotated[Runtime, Depends(_runtime)]
KeyDep = Annotated[str, Depends(_key)]


@router.post("/chat/completions", response_model=None)
async def chat_completions(
    body: ChatCompletionRequest, key: KeyDep, runtime: RuntimeDep, request: Request
) -> Response:
    """OpenAI's chat completions, served by a provider and charged on its signed receipt."""
    return await service.complete(runtime, key, body, "chat/completions", request.receive)


@router.post("/completions", response_model=None)
async def completions(
    body: CompletionRequest, key: KeyDep, runtime: RuntimeDep, request: Request
) -> Response:
    """OpenAI's (legacy) text completions, served and charged like chat completions."""
    return await service.complete(runtime, key, body, "completions", request.receive)


@router.get("/models")
async def list_models(runtime: RuntimeDep) -> dict[str, Any]:
    """Models on offer now, with price ranges (per million tokens) and provider counts."""
    return service.list_models(runtime)


@router.get("/models/{model:path}")
async def retrieve_model(model: str, runtime: RuntimeDep) -> dict[str, Any]:
    """One model on offer (ids may hold `/`, as `meta-llama/Llama-3.1-8B-Instruct` does)."""
    return service.get_model(runtime, model)
