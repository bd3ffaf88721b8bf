"""The served model's context length from the engine's `GET /v1/models`."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from provider_agent.engine.models import served_context_length
from provider_agent.supervisor import EngineSupervisor, SupervisorConfig
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


def _probed(engine: FakeEngine, served_model: str = "tiny-llama") -> tuple[str | None, int | None]:
    """What the supervisor's health probe of `engine` says, and the context it recorded."""

    async def probe() -> tuple[str | None, int | None]:
        transport = httpx.ASGITransport(app=engine)
        async with httpx.AsyncClient(transport=transport) as http:
            config = SupervisorConfig(url="http://engine", served_model=served_model)
            supervisor = EngineSupervisor(config, http=http)
            return await supervisor.probe(), supervisor.context_length

    return asyncio.run(probe())


def test_the_supervisors_probe_reads_it_over_http_as_the_engine_reports_it() -> None:
    assert _probed(FakeEngine(max_model_len=4096)) == (None, 4096)
    assert _probed(FakeEngine(max_model_len=None)) == (None, None)
    problem, context = _probed(FakeEngine(max_model_len=4096), served_model="not-served")
    assert problem == "the engine serves ['tiny-llama'], not 'not-served'"
    assert context is None
