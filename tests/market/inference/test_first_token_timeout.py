"""A provider whose engine stalls before a stream's first token (a hung GPU, a wedged vLLM
whose /health still answers) is given up after `first_token_timeout_s`: its job fails at no
cost and the request goes to the next provider, as a stream that broke off before its first
token does."""

from __future__ import annotations

import time
from typing import Any

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from market.jobs.models import JobStatus
from tests.market.inference.conftest import (
    PROVIDER_A,
    Market,
    agent_idle,
    assert_failed_over,
    jobs_of,
    nothing_charged,
    pin_a_then_b,
    settles,
    stored_receipts,
)
from tests.market.inference.servers import MODEL, Agent
from tests.support.openai_upstream import UpstreamProcess

MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Say something."}]
TIMEOUT_S = 0.5
STALLED = f"no first token within {TIMEOUT_S:g} s"
STALL_MS = 20_000
"""Far past the timeout: the engine sends nothing unless its request is closed."""
#: Where the engine stalls: after its headers and the chat stream's role chunk (as vLLM does
#: when the GPU hangs), or before it answers at all.
STALLS: dict[str, dict[str, Any]] = {
    "after_the_role_chunk": {"stall_ms": STALL_MS},
    "before_the_headers": {"stall_ms": STALL_MS, "stall_headers": True},
}


@pytest.fixture
def hasty(market: Market, monkeypatch: pytest.MonkeyPatch) -> Market:
    """The market with a first-token timeout of `TIMEOUT_S`."""
    settings = market.runtime.settings.model_copy(update={"first_token_timeout_s": TIMEOUT_S})
    monkeypatch.setattr(market.runtime, "settings", settings)
    return market


def _alone(
    market: Market, agents: dict[str, Agent], upstream: UpstreamProcess, **control: Any
) -> openai.OpenAI:
    """Provider A alone in routing, its engine set by `control`: a client of the market."""
    market.routing.pin([agents[PROVIDER_A].offer(1_000_000, 1_000_000)])
    upstream.control(**control)
    return openai.OpenAI(base_url=market.url, api_key=market.api_key, max_retries=0)


@pytest.mark.parametrize("stall", STALLS.values(), ids=STALLS.keys())
def test_a_stream_without_a_first_token_in_time_goes_to_the_next_provider(
    hasty: Market, agents: dict[str, Agent], upstream: UpstreamProcess, stall: dict[str, Any]
) -> None:
    market = hasty
    pin_a_then_b(market, agents)
    upstream.control(**stall, times=1)  # the first provider's engine stalls, the next does not
    client = openai.OpenAI(base_url=market.url, api_key=market.api_key, max_retries=0)
    start = time.monotonic()
    stream = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=4, stream=True
    )
    chunks = list(stream)
    assert time.monotonic() - start < TIMEOUT_S + 1.5
    failed = assert_failed_over(market, chunks, stream.response.headers["x-request-id"])
    assert failed.error == STALLED
    # The stalled agent lets go of the job, and of its engine request, and signs no
    # receipt: it delivered no token.
    assert agent_idle(agents[PROVIDER_A])
    assert settles(lambda: upstream.running() == 0)
    assert stored_receipts(agents[PROVIDER_A], failed.id) == []


def test_a_stream_without_a_first_token_anywhere_is_a_502_and_not_charged(
    hasty: Market, agents: dict[str, Agent], upstream: UpstreamProcess
) -> None:
    market = hasty
    client = _alone(market, agents, upstream, stall_ms=STALL_MS)
    start = time.monotonic()
    with pytest.raises(openai.InternalServerError) as failed:
        client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=16, stream=True)
    assert time.monotonic() - start < TIMEOUT_S + 1.5
    (job,) = jobs_of(market)
    error = failed.value
    assert (error.status_code, error.request_id) == (502, job.id)
    assert isinstance(error.body, dict)
    assert error.body["code"] == "provider_unavailable"
    assert error.body["message"] == f"No provider could serve the request: {PROVIDER_A}: {STALLED}"
    assert (job.status, job.error) == (JobStatus.FAILED, STALLED)
    nothing_charged(market, job.id)
    assert market.routing.pinned[0].in_flight == 0
    # The engine sees its request go away (vLLM aborts it), long before its stall would end.
    assert settles(lambda: upstream.running() == 0)
    assert agent_idle(agents[PROVIDER_A])


def test_the_timeout_bounds_the_first_token_only(
    hasty: Market, agents: dict[str, Agent], upstream: UpstreamProcess
) -> None:
    """A stream whose first token comes in time may take longer than it in all."""
    market = hasty
    # 0.2 s to each token, 0.8 s in all
    client = _alone(market, agents, upstream, completion_tokens=4, delay_ms=200)
    start = time.monotonic()
    stream = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=4, stream=True
    )
    assert [c.choices[0].delta.content for c in stream] == ["", "t0 ", "t1 ", "t2 ", "t3 "]
    assert time.monotonic() - start > TIMEOUT_S
    (job,) = jobs_of(market)
    assert job.status is JobStatus.COMPLETED
