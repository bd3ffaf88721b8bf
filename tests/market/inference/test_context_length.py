"""Routing by the engines' context lengths, with real agents in front of fake engines that
refuse a completion limit past their context as vLLM does."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from market.chain.service import MarketChain
from market.jobs.models import JobStatus
from tests.market.inference.conftest import PROVIDER_B, Market, jobs_of
from tests.market.inference.servers import MODEL, Agent, start_agent
from tests.support.openai_upstream import UpstreamProcess, start_upstream

PROVIDER_SHORT = "0x15d34AAf54267DB7D7c367839AAf71A00a2C6A65"
SHORT_CONTEXT = 256
LONG_CONTEXT = 2_048  # the shared fake engine's
MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Say something."}]


@pytest.fixture(scope="module")
def short_agent(chain: MarketChain, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Agent]:
    """A real agent whose engine serves a 256-token context."""
    engine = start_upstream(max_model_len=SHORT_CONTEXT)
    agent = start_agent(
        engine.url, chain.domain, PROVIDER_SHORT, "0x" + "05" * 32, tmp_path_factory.mktemp("s")
    )
    try:
        yield agent
    finally:
        agent.served.stop()
        engine.stop()


def _offers(short: Agent, long: Agent) -> list[Any]:
    """The short-context provider is the cheaper one, so price routing prefers it."""
    return [
        dataclasses.replace(short.offer(1_000_000, 1_000_000), context_length=SHORT_CONTEXT),
        dataclasses.replace(long.offer(2_000_000, 2_000_000), context_length=LONG_CONTEXT),
    ]


def test_a_limit_past_an_offers_context_goes_to_a_provider_with_a_longer_one(
    market: Market, agents: dict[str, Agent], short_agent: Agent, upstream: UpstreamProcess
) -> None:
    market.routing.pin(_offers(short_agent, agents[PROVIDER_B]))
    client = openai.OpenAI(base_url=market.url, api_key=market.api_key, max_retries=0)
    fits = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=100)
    assert (fits.model_extra or {})["provider"]["address"] == PROVIDER_SHORT
    longer = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_completion_tokens=SHORT_CONTEXT + 1
    )
    assert (longer.model_extra or {})["provider"]["address"] == PROVIDER_B
    assert upstream.last_body()["max_tokens"] == SHORT_CONTEXT + 1
    streamed = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=1_000, stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
    jobs = jobs_of(market)
    assert [(j.provider_address, j.status) for j in jobs] == [
        (PROVIDER_SHORT, JobStatus.COMPLETED),
        (PROVIDER_B, JobStatus.COMPLETED),
        (PROVIDER_B, JobStatus.COMPLETED),
    ]


@pytest.mark.parametrize("param", ["max_tokens", "max_completion_tokens"])
def test_a_limit_past_every_offers_context_is_a_400_that_names_the_limit(
    market: Market, agents: dict[str, Agent], short_agent: Agent, param: str
) -> None:
    market.routing.pin(_offers(short_agent, agents[PROVIDER_B]))
    body = {"model": MODEL, "messages": MESSAGES, param: LONG_CONTEXT + 1}
    headers = {"Authorization": f"Bearer {market.api_key}"}
    refused = httpx.post(f"{market.url}/chat/completions", json=body, headers=headers)
    assert refused.status_code == 400
    assert refused.json()["error"] == {
        "message": f"{param} is too large: 2049. The providers of `{MODEL}` on this market "
        "serve at most 2048 tokens of context (prompt and completion together), whereas you "
        "provided 2049.",
        "type": "invalid_request_error",
        "param": param,
        "code": "invalid_value",
    }
    assert jobs_of(market) == []  # refused before anything was held
    stranger = {"Authorization": "Bearer sk-jm-unknown"}  # an unknown key: 401 before all else
    refused = httpx.post(f"{market.url}/chat/completions", json=body, headers=stranger)
    assert (refused.status_code, refused.json()["error"]["code"]) == (401, "invalid_api_key")
    client = openai.OpenAI(base_url=market.url, api_key=market.api_key, max_retries=0)
    with pytest.raises(openai.BadRequestError) as raised:
        client.completions.create(model=MODEL, prompt="Hi", max_tokens=LONG_CONTEXT + 1)
    assert (raised.value.code, raised.value.param) == ("invalid_value", "max_tokens")


def test_an_offer_that_does_not_report_its_context_is_never_skipped(
    market: Market, agents: dict[str, Agent], short_agent: Agent
) -> None:
    short, long = _offers(short_agent, agents[PROVIDER_B])
    market.routing.pin([short, dataclasses.replace(long, context_length=None)])
    client = openai.OpenAI(base_url=market.url, api_key=market.api_key, max_retries=0)
    served = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=1_000)
    assert (served.model_extra or {})["provider"]["address"] == PROVIDER_B
    # the engine behind it refuses what its context cannot hold, as vLLM does
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=5_000)
    assert "max_tokens=5000 cannot be greater than max_model_len=2048" in raised.value.message


def test_models_show_the_context_length_the_providers_serve(
    market: Market, agents: dict[str, Agent], short_agent: Agent
) -> None:
    short, long = _offers(short_agent, agents[PROVIDER_B])
    unreported = dataclasses.replace(
        agents[PROVIDER_B].offer(1, 1), model="other-model", context_length=None
    )
    market.routing.pin([short, long, unreported])
    client = openai.OpenAI(base_url=market.url, api_key=market.api_key)
    models = {m.id: m.model_extra or {} for m in client.models.list()}
    assert models[MODEL]["context_length"] == LONG_CONTEXT
    assert models[MODEL]["market"]["context_length"] == {"min": SHORT_CONTEXT, "max": 2_048}
    assert models["other-model"]["context_length"] is None
    assert models["other-model"]["market"]["context_length"] is None
    one = client.models.retrieve(MODEL).model_extra or {}
    assert one["context_length"] == LONG_CONTEXT
