"""The served model's context length from the engine's `GET /v1/models`."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from provider_agent.engine.errors import EngineError, ModelsUnavailableError
from provider_agent.engine.models import afetch_context_length, served_context_length
from tests.support.openai_upstream import FakeEngine

# The shape of vLLM 0.32's answer (its `ModelCard`), with two models listed.
MODELS: dict[str, Any] = {
    "object": "list",
    "data": [
        {"id": "other", "object": "model", "owned_by": "vllm", "max_model_len": 8192},
        {
            "id": "tiny-llama",
            "object": "model",
            "created": 1767225600,
            "owned_by": "vllm",
            "root": "/models/tiny-llama",
            "parent": None,
            "max_model_len": 2048,
            "permission": [],
        },
    ],
}


def test_the_served_models_max_model_len_is_its_context_length() -> None:
    assert served_context_length(MODELS, "tiny-llama") == 2048
    assert served_context_length(MODELS, "other") == 8192


@pytest.mark.parametrize(
    "body",
    [
        {"object": "list", "data": [{"id": "tiny-llama", "object": "model"}]},
        {"object": "list", "data": [{"id": "tiny-llama", "max_model_len": None}]},
        {"object": "list", "data": [{"id": "tiny-llama", "max_model_len": 0}]},
        {"object": "list", "data": [{"id": "tiny-llama", "max_model_len": "2048"}]},
        {"object": "list", "data": [{"id": "tiny-llama", "max_model_len": 2048.5}]},
        {"object": "list", "data": [{"id": "tiny-llama", "max_model_len": True}]},
        {"object": "list", "data": [{"id": "another", "max_model_len": 2048}]},
        {"object": "list", "data": "nothing"},
        ["not", "an", "object"],
    ],
)
def test_a_context_length_not_reported_is_none_never_a_guess(body: Any) -> None:
    assert served_context_length(body, "tiny-llama") is None


def _fetch(engine: FakeEngine, served_model: str = "tiny-llama") -> int | None:
    async def fetch() -> int | None:
        transport = httpx.ASGITransport(app=engine)
        async with httpx.AsyncClient(transport=transport, base_url="http://engine") as client:
            return await afetch_context_length(client, served_model)

    return asyncio.run(fetch())


def test_it_is_read_over_http_as_the_engine_reports_it() -> None:
    assert _fetch(FakeEngine(max_model_len=4096)) == 4096
    assert _fetch(FakeEngine(max_model_len=None)) is None
    assert _fetch(FakeEngine(max_model_len=4096), served_model="not-served") is None


def test_an_engine_that_does_not_answer_is_an_engine_error() -> None:
    async def fetch() -> int | None:
        async with httpx.AsyncClient(base_url="http://127.0.0.1:9", timeout=2.0) as client:
            return await afetch_context_length(client, "tiny-llama")

    with pytest.raises(ModelsUnavailableError, match="GET /v1/models failed") as raised:
        asyncio.run(fetch())
    assert isinstance(raised.value, EngineError)
    assert raised.value.code == "models_unavailable"
