"""The market and a real provider agent in front of a real vLLM (CPU build, the tiny model):
what buyers' OpenAI clients send beyond a bare prompt (stop sequences, structured output,
log probabilities, seeds) reaches the engine unchanged, comes back unchanged, and is
charged for exactly the tokens the engine reports. Skipped without the vLLM venv."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from market.chain.service import MarketChain
from market.db import session_scope
from market.demo.vllm_server import VllmServer, start_vllm
from market.jobs.models import Job, JobStatus, Receipt
from market.ledger import service as ledger
from tests.market.inference.conftest import DEPOSIT, PROVIDER_A, Market
from tests.market.inference.servers import MODEL, Agent, start_agent
from tests.support.vllm import needs_vllm

pytestmark = needs_vllm
PRICE_IN, PRICE_OUT = 1_000_000, 2_000_000
"""One base unit per prompt token, two per output token: a charge reads as token counts."""
SAY: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Say"}]
#: The tiny model's greedy answer to `SAY` is "elelel..." (one token per "el"), so a stop
#: sequence of two tokens ends it after a few tokens, and one of a single character at once.
YES_OR_NO = {"type": "string", "enum": ["yes", "no"]}


@pytest.fixture(scope="module")
def vllm(tiny_model: Path) -> Iterator[VllmServer]:
    with start_vllm(tiny_model, MODEL) as server:
        yield server


@pytest.fixture(scope="module")
def agent(
    vllm: VllmServer, chain: MarketChain, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Agent]:
    started = start_agent(
        f"{vllm.base_url}/v1",
        chain.domain,
        PROVIDER_A,
        "0x" + "05" * 32,
        tmp_path_factory.mktemp("a"),
    )
    try:
        yield started
    finally:
        started.served.stop()


@pytest.fixture
def client(market: Market, agent: Agent) -> openai.OpenAI:
    """An OpenAI client of the market, whose one provider is the agent in front of vLLM."""
    market.routing.pin([agent.offer(PRICE_IN, PRICE_OUT)])
    return openai.OpenAI(base_url=market.url, api_key=market.api_key, max_retries=0)


def _charged(market: Market, usage: Any) -> Receipt:
    """The one job's receipt, whose token counts are the answer's `usage` and whose charge
    is exactly those tokens at the offer's prices, the ledger balanced."""
    with session_scope(market.sessions) as session:
        (job,) = session.query(Job).all()
        assert job.status is JobStatus.COMPLETED, job.error
        receipt = session.get(Receipt, job.id)
        assert receipt is not None
        counts = (receipt.prompt_tokens, receipt.completion_tokens)
        assert counts == (usage.prompt_tokens, usage.completion_tokens)
        assert receipt.charge == receipt.prompt_tokens + 2 * receipt.completion_tokens
        statement = ledger.statement(session, market.buyer)
        assert (statement.available, statement.held) == (DEPOSIT - receipt.charge, 0)
        ledger.check_ledger(session)
        session.expunge(receipt)
    return receipt


def _stream(client: openai.OpenAI, **params: Any) -> tuple[str, list[Any], Any]:
    """A streamed chat completion of `SAY`: its text, its choices' finish reasons and its
    usage."""
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=SAY,
            stream=True,
            stream_options={"include_usage": True},
            temperature=0,
            **params,
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    (usage,) = [c.usage for c in chunks if c.usage is not None]
    return text, finishes, usage


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_a_stop_sequence_ends_the_answer_and_its_tokens_are_charged(
    market: Market, client: openai.OpenAI, stream: bool
) -> None:
    if stream:
        text, finishes, usage = _stream(client, max_tokens=30, stop=["lel"])
        assert finishes[-1] == "stop"
    else:
        answer = client.chat.completions.create(
            model=MODEL, messages=SAY, max_tokens=30, temperature=0, stop=["lel"]
        )
        text, usage = answer.choices[0].message.content or "", answer.usage
        assert answer.choices[0].finish_reason == "stop"
    assert "lel" not in text
    assert text.startswith("e")
    assert 0 < usage.completion_tokens < 30
    _charged(market, usage)


def test_a_stream_stopped_on_its_first_token_shows_no_text_and_is_charged_one_token(
    market: Market, client: openai.OpenAI
) -> None:
    """The first token holds the stop sequence: vLLM sends it with empty content."""
    text, finishes, usage = _stream(client, max_tokens=30, stop=["e"])
    assert (text, finishes[-1], usage.completion_tokens) == ("", "stop", 1)
    _charged(market, usage)


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_structured_output_follows_the_schema_and_is_charged(
    market: Market, client: openai.OpenAI, stream: bool
) -> None:
    response_format: Any = {
        "type": "json_schema",
        "json_schema": {"name": "answer", "schema": YES_OR_NO, "strict": True},
    }
    if stream:
        text, finishes, usage = _stream(client, max_tokens=20, response_format=response_format)
        assert finishes[-1] == "stop"
    else:
        answer = client.chat.completions.create(
            model=MODEL, messages=SAY, max_tokens=20, temperature=0, response_format=response_format
        )
        text, usage = answer.choices[0].message.content or "", answer.usage
    assert json.loads(text) in YES_OR_NO["enum"]
    _charged(market, usage)


def test_log_probabilities_come_back_for_each_streamed_token(
    market: Market, client: openai.OpenAI
) -> None:
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=SAY,
            max_tokens=6,
            temperature=0,
            logprobs=True,
            top_logprobs=2,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    entries = [
        entry
        for c in chunks
        if c.choices and c.choices[0].logprobs and c.choices[0].logprobs.content
        for entry in c.choices[0].logprobs.content
    ]
    assert len(entries) == 6
    assert all(e.logprob <= 0.0 and len(e.top_logprobs) == 2 for e in entries)
    (usage,) = [c.usage for c in chunks if c.usage is not None]
    assert usage.completion_tokens == 6
    _charged(market, usage)


def test_a_seed_gives_the_same_sampled_answer_through_the_market(
    market: Market, client: openai.OpenAI
) -> None:
    def sampled() -> str:
        answer = client.chat.completions.create(
            model=MODEL, messages=SAY, max_tokens=12, temperature=1.0, seed=7
        )
        return answer.choices[0].message.content or ""

    first, second = sampled(), sampled()
    assert first
    assert first == second
    with session_scope(market.sessions) as session:
        jobs = session.query(Job).all()
        assert [job.status for job in jobs] == [JobStatus.COMPLETED] * 2
        ledger.check_ledger(session)
