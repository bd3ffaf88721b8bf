"""Receipt ids and energy in `usage`, and forged receipts: refused, stored, never charged.

The forging "agent" is a real HTTP server speaking docs/agent-protocol.md: it passes the
market's request and ticket to a real agent, then spoils the answer before relaying it
(counts that differ from what was signed, or a receipt re-signed with another key).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam
from sqlalchemy import select
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from market.db import session_scope
from market.inference.agents import TICKET_HEADER
from market.jobs import service as jobs
from market.jobs.models import Job, JobStatus, Receipt
from market.ledger import service as ledger
from protocol.keys import signing_key_from_seed
from protocol.messages import Receipt as SignedReceipt
from protocol.messages import message_digest, parse_signed, sign
from tests.market.inference.conftest import DEPOSIT, PROVIDER_A, Market
from tests.market.inference.servers import MODEL, Agent, Served, serve, sync_agent_receipts

MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Say something."}]
PRICE = 1_000_000
Spoiler = Callable[[dict[str, Any]], None]


def _inflate_usage(payload: dict[str, Any]) -> None:
    payload["usage"]["completion_tokens"] += 5


def _resign_with_another_key(payload: dict[str, Any]) -> None:
    envelope = parse_signed(json.dumps(payload["receipt"]), SignedReceipt)
    forged = sign(envelope.message, signing_key_from_seed("0x" + "66" * 32))
    payload["receipt"] = json.loads(forged.model_dump_json())


def _drop_receipt(payload: dict[str, Any]) -> None:
    del payload["receipt"]


def forging_agent(real: Agent, spoil: Spoiler) -> Served:
    """An agent that relays jobs to `real` and spoils each JSON answer with `spoil`."""

    async def job(request: Request) -> Response:
        route = request.path_params["route"]
        async with httpx.AsyncClient(timeout=10) as client:
            answer = await client.post(
                f"{real.served.url}/jobs/{route}",
                content=await request.body(),
                headers={
                    "content-type": "application/json",
                    TICKET_HEADER: request.headers[TICKET_HEADER],
                },
            )
        if answer.status_code != 200:
            return Response(answer.content, answer.status_code, media_type="application/json")
        payload = answer.json()
        spoil(payload)
        return Response(json.dumps(payload), media_type="application/json")

    return serve(Starlette(routes=[Route("/jobs/{route:path}", job, methods=["POST"])]))


@pytest.fixture
def forger(agents: dict[str, Agent]) -> Iterator[Callable[[Spoiler], Served]]:
    started: list[Served] = []

    def start(spoil: Spoiler) -> Served:
        started.append(forging_agent(agents[PROVIDER_A], spoil))
        return started[-1]

    yield start
    for served in started:
        served.stop()


def _only_job(market: Market) -> Job:
    with session_scope(market.sessions) as session:
        (job,) = session.scalars(select(Job))
        session.expunge(job)
        return job


def test_usage_names_the_receipt_and_its_energy(market: Market, agents: dict[str, Agent]) -> None:
    market.routing.pin([agents[PROVIDER_A].offer(PRICE, PRICE)])
    client = openai.OpenAI(base_url=market.url, api_key=market.api_key)
    completion = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=16)
    assert completion.usage is not None
    usage_extra = completion.usage.model_extra or {}
    job = _only_job(market)
    with session_scope(market.sessions) as session:
        stored = session.get(Receipt, job.id)
        assert stored is not None
        receipt_hash = stored.receipt_hash
    assert usage_extra["receipt"] == {"job_id": job.id, "receipt_hash": receipt_hash}
    assert usage_extra["energy"] == (completion.model_extra or {})["energy"]
    assert usage_extra["energy"]["method"] == "unmeasured"
    assert (completion.model_extra or {})["provider"]["address"] == PROVIDER_A


def test_streamed_usage_names_the_receipt_and_its_energy(
    market: Market, agents: dict[str, Agent]
) -> None:
    market.routing.pin([agents[PROVIDER_A].offer(PRICE, PRICE)])

    async def run() -> list[Any]:
        client = openai.AsyncOpenAI(base_url=market.url, api_key=market.api_key)
        stream = await client.chat.completions.create(
            model=MODEL,
            messages=MESSAGES,
            max_tokens=16,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
        await client.close()
        return chunks

    chunks = asyncio.run(run())
    last = chunks[-1]
    assert last.usage is not None
    assert not last.choices
    usage_extra = last.usage.model_extra or {}
    job = _only_job(market)
    with session_scope(market.sessions) as session:
        stored = session.get(Receipt, job.id)
        assert stored is not None
        envelope = parse_signed(stored.envelope, SignedReceipt)
    assert usage_extra["receipt"] == {
        "job_id": job.id,
        "receipt_hash": message_digest(envelope.message),
    }
    assert usage_extra["energy"] == (last.model_extra or {})["energy"]


@pytest.mark.parametrize(
    ("spoil", "reason"),
    [
        (_inflate_usage, "usage_mismatch"),
        (_resign_with_another_key, "bad_signature"),
        (_drop_receipt, "missing"),
    ],
)
def test_forged_receipt_is_refused_stored_and_not_charged(
    market: Market,
    agents: dict[str, Agent],
    forger: Callable[[Spoiler], Served],
    spoil: Spoiler,
    reason: str,
) -> None:
    offer = agents[PROVIDER_A].offer(PRICE, PRICE)
    offer.job_url = f"{forger(spoil).url}/jobs"
    market.routing.pin([offer])
    client = openai.OpenAI(base_url=market.url, api_key=market.api_key, max_retries=0)
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=16)
    assert caught.value.status_code == 502
    body = caught.value.body
    assert isinstance(body, dict)
    assert body["code"] == "invalid_receipt"
    job = _only_job(market)
    assert job.status is JobStatus.FAILED
    with session_scope(market.sessions) as session:
        assert ledger.get_hold(session, job.id).status.value == "released"
        statement = ledger.statement(session, market.buyer)
        assert (statement.available, statement.held, statement.charged) == (DEPOSIT, 0, 0)
        assert session.get(Receipt, job.id) is None
        (rejected,) = jobs.rejected_receipts(session, job.id)
        assert (rejected.reason, rejected.provider_address) == (reason, PROVIDER_A)
        assert rejected.message
        if reason == "missing":
            assert rejected.envelope is None
        else:
            assert rejected.envelope is not None
            assert json.loads(rejected.envelope)["message"]["job_id"] == job.id
        ledger.check_ledger(session)
    assert offer.in_flight == 0


def test_the_agents_receipt_sync_tells_a_charged_receipt_from_a_refused_one(
    market: Market,
    agents: dict[str, Agent],
    forger: Callable[[Spoiler], Served],
    tmp_path: Path,
) -> None:
    agent = agents[PROVIDER_A]
    client = openai.OpenAI(base_url=market.url, api_key=market.api_key, max_retries=0)
    market.routing.pin([agent.offer(PRICE, PRICE)])
    client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=16)
    spoiled = agent.offer(PRICE, PRICE)
    spoiled.job_url = f"{forger(_inflate_usage).url}/jobs"
    market.routing.pin([spoiled])
    with pytest.raises(openai.APIStatusError):
        client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=16)
    with session_scope(market.sessions) as session:
        ended = {job.status: (job.id, job.error) for job in session.scalars(select(Job))}
        before = ledger.statement(session, market.buyer)
    (charged, _), (refused, why) = ended[JobStatus.COMPLETED], ended[JobStatus.FAILED]

    result, outbox = sync_agent_receipts(
        agent, market.served.url, market.runtime, {charged, refused}, tmp_path
    )

    # the agent signed both; the market holds one, and will never pay the other
    assert (result.states, result.error) == ({"recorded": 1, "closed": 1}, None)
    assert outbox.count_unsent() == 0
    unpaid = [json.loads(line) for line in outbox.unpaid_path.read_text().splitlines()]
    assert unpaid == [{"job_id": refused, "state": "closed", "detail": why}]
    assert str(why).startswith("receipt rejected (usage_mismatch)")
    with session_scope(market.sessions) as session:
        assert ledger.statement(session, market.buyer) == before


def test_receipt_signed_by_an_unexpected_key_is_refused_in_a_stream(
    market: Market, agents: dict[str, Agent]
) -> None:
    offer = agents[PROVIDER_A].offer(PRICE, PRICE)
    offer.public_key = "ab" * 32  # routing believes another key signs this provider's receipts
    market.routing.pin([offer])
    client = openai.OpenAI(base_url=market.url, api_key=market.api_key, max_retries=0)
    stream = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=16, stream=True
    )
    with pytest.raises(openai.APIError, match="receipt"):
        for _ in stream:
            pass
    job = _only_job(market)
    assert job.status is JobStatus.FAILED
    with session_scope(market.sessions) as session:
        (rejected,) = jobs.rejected_receipts(session, job.id)
        assert rejected.reason == "bad_signature"
        assert ledger.statement(session, market.buyer).available == DEPOSIT
        assert ledger.get_hold(session, job.id).status.value == "released"
