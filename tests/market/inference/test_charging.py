"""The official `openai` client against a served market and real provider agents: charging."""

from __future__ import annotations

import json
import math

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionChunk, ChatCompletionMessageParam

from market.db import session_scope
from market.inference.schemas import ChatCompletionRequest
from market.jobs.models import Job, JobStatus, Receipt
from market.ledger import service as ledger
from protocol.messages import Receipt as SignedReceipt
from protocol.messages import message_digest, parse_signed, verify
from tests.market.inference.conftest import DEPOSIT, PROVIDER_A, Market
from tests.market.inference.servers import MODEL, Agent

PRICE_IN, PRICE_OUT = 1_500_001, 2_500_003
MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Say something."}]


def _expected_hold(max_tokens: int) -> int:
    request = ChatCompletionRequest(model=MODEL, messages=MESSAGES, max_tokens=max_tokens)
    bound = request.prompt_bound()
    return math.ceil((bound * PRICE_IN + max_tokens * PRICE_OUT) / 1_000_000)


def _check_books(market: Market, job_id: str, prompt: int, completion: int) -> None:
    charge = math.ceil((prompt * PRICE_IN + completion * PRICE_OUT) / 1_000_000)
    fee = charge * 500 // 10_000
    with session_scope(market.sessions) as session:
        hold = ledger.get_hold(session, job_id)
        assert (hold.amount, hold.charged, hold.fee) == (_expected_hold(16), charge, fee)
        statement = ledger.statement(session, market.buyer)
        assert statement.available == DEPOSIT - charge
        assert statement.held == 0
        assert statement.charged == charge
        assert statement.released == hold.amount - charge
        assert ledger.balance(session, ledger.provider_earned(PROVIDER_A)) == charge - fee
        assert ledger.balance(session, ledger.PROTOCOL_FEES) == fee
        ledger.check_ledger(session)
        stored = session.get(Receipt, job_id)
        assert stored is not None
        assert (stored.charge, stored.fee, stored.energy_method) == (charge, fee, "unmeasured")
        assert stored.energy_mj is None
        envelope = parse_signed(stored.envelope, SignedReceipt)
        receipt = verify(envelope, market.routing.pinned[0].public_key, market.runtime.chain.domain)
        assert message_digest(receipt) == stored.receipt_hash
        assert (receipt.prompt_tokens, receipt.completion_tokens) == (prompt, completion)
        job = session.get(Job, job_id)
        assert job is not None
        assert job.status is JobStatus.COMPLETED
        # The ticket's issue time is kept for the receipt checks: taken just before the job
        # was recorded, and not after the provider's first token.
        issued = job.ticket_issued_at_ms
        assert issued is not None
        assert 0 <= job.created_at.timestamp() * 1000 - issued < 5_000
        assert receipt.first_token_at is not None
        assert issued <= receipt.first_token_at


def _charged_chat(market: Market, agents: dict[str, Agent]) -> None:
    market.routing.pin([agents[PROVIDER_A].offer(PRICE_IN, PRICE_OUT)])
    client = openai.OpenAI(base_url=market.url, api_key=market.api_key)
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL,
        messages=MESSAGES,
        max_tokens=16,
        temperature=0.0,
    )
    completion = raw.parse()
    job_id = raw.headers["x-job-id"]
    assert completion.choices[0].message.content == "".join(f"t{i} " for i in range(8))
    assert completion.usage is not None
    extra = completion.model_extra or {}
    energy = extra["energy"]
    assert (energy["method"], energy["joules"], energy["region"]) == ("unmeasured", None, "DE")
    assert energy["basis"]
    for figure in ("gpu_joules", "wall_kwh", "energy_cost", "gco2"):
        assert energy[figure] is None  # unknown, never 0
    assert extra["provider"] == {"address": PROVIDER_A, "region": "DE"}
    assert "receipt" not in extra
    assert "token_ids" not in (completion.choices[0].model_extra or {})
    _check_books(market, job_id, completion.usage.prompt_tokens, completion.usage.completion_tokens)
    assert market.routing.pinned[0].in_flight == 0
    job = httpx.get(
        f"{market.served.url}/jobs/{job_id}",
        headers={"Authorization": f"Bearer {market.api_key}"},
    ).json()
    assert job["status"] == "completed"
    assert job["receipt"]["envelope"]["message"]["job_id"] == job_id
    # The buyer's history shows the same tokens, charge and energy block as the response.
    (row,) = httpx.get(
        f"{market.served.url}/jobs",
        params={"limit": 1},
        headers={"Authorization": f"Bearer {market.api_key}"},
    ).json()
    assert (row["id"], row["status"], row["receipt_status"]) == (job_id, "completed", "complete")
    assert (row["prompt_tokens"], row["completion_tokens"]) == (
        completion.usage.prompt_tokens,
        completion.usage.completion_tokens,
    )
    assert row["charge"] == job["charge"] > 0
    assert row["energy"] == energy
    # Their errors are the market's body, as docs/buyer-api.md gives it, not OpenAI's.
    key = {"Authorization": f"Bearer {market.api_key}"}
    errors = {
        "/jobs/" + "0" * 32: (key, 404, "job_not_found"),
        "/jobs?limit=0": (key, 422, "invalid_request"),
        "/jobs": ({}, 401, "invalid_api_key"),
    }
    for path, (headers, status, code) in errors.items():
        refused = httpx.get(f"{market.served.url}{path}", headers=headers)
        assert refused.status_code == status, path
        assert refused.json()["error"].keys() == {"code", "message"}, path
        assert refused.json()["error"]["code"] == code, path


def test_chat_completion_is_charged_on_its_verified_receipt(
    market: Market, agents: dict[str, Agent]
) -> None:
    _charged_chat(market, agents)


def test_chat_completion_is_charged_on_postgresql(
    pg_market: Market, agents: dict[str, Agent]
) -> None:
    _charged_chat(pg_market, agents)


async def _stream(market: Market, include_usage: bool) -> tuple[list[ChatCompletionChunk], str]:
    client = openai.AsyncOpenAI(base_url=market.url, api_key=market.api_key)
    raw = await client.chat.completions.with_raw_response.create(
        model=MODEL,
        messages=MESSAGES,
        max_tokens=16,
        stream=True,
        stream_options={"include_usage": True} if include_usage else None,
    )
    chunks = [chunk async for chunk in raw.parse()]
    await client.close()
    return chunks, raw.headers["x-job-id"]


@pytest.mark.parametrize("include_usage", [True, False])
def test_stream_is_relayed_and_charged(
    market: Market, agents: dict[str, Agent], include_usage: bool
) -> None:
    import asyncio

    market.routing.pin([agents[PROVIDER_A].offer(PRICE_IN, PRICE_OUT)])
    chunks, job_id = asyncio.run(_stream(market, include_usage))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "".join(f"t{i} " for i in range(8))
    for chunk in chunks:
        assert "token_ids" not in json.dumps(chunk.model_dump())
    usage_chunks = [c for c in chunks if not c.choices]
    with session_scope(market.sessions) as session:
        stored = session.get(Receipt, job_id)
        assert stored is not None
        prompt, completion = stored.prompt_tokens, stored.completion_tokens
    assert completion == 8
    if include_usage:
        (last,) = usage_chunks
        assert last.usage is not None
        assert last.usage.completion_tokens == 8
        assert (last.model_extra or {})["energy"]["method"] == "unmeasured"
        assert (last.model_extra or {})["energy"]["joules"] is None
    else:
        assert usage_chunks == []
    _check_books(market, job_id, prompt, completion)


def test_legacy_completion_is_charged(market: Market, agents: dict[str, Agent]) -> None:
    market.routing.pin([agents[PROVIDER_A].offer(PRICE_IN, PRICE_OUT)])
    client = openai.OpenAI(base_url=market.url, api_key=market.api_key)
    result = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=4)
    assert result.choices[0].text == "t0 t1 t2 t3 "
    assert (result.model_extra or {})["energy"]["method"] == "unmeasured"
    with session_scope(market.sessions) as session:
        assert ledger.statement(session, market.buyer).charged > 0
