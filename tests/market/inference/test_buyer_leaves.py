"""A buyer who disconnects mid-stream: the market cancels the job at the agent, reads on for
the agent's interrupted receipt and charges the tokens made until the engine stopped.

A buyer who hangs up before the answer starts (a client timeout, a closed tab) is not
charged, the request is not sent on to another provider, and the provider's engine stops
computing it (the market closes its request to the agent, the agent its request to the
engine, as vLLM aborts a request whose client left)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import Request
from fastapi.responses import JSONResponse, Response
from sqlalchemy import select

from market.db import session_scope
from market.inference.service import BUYER_LEFT
from market.jobs.models import Job, JobStatus, Receipt
from market.ledger import service as ledger
from protocol.messages import output_digest
from tests.market.inference.conftest import (
    DEPOSIT,
    PROVIDER_A,
    Market,
    agent_idle,
    jobs_of,
    nothing_charged,
    pin_a_then_b,
    settles,
    stored_receipts,
)
from tests.market.inference.servers import MODEL, Agent, sync_agent_receipts
from tests.support.openai_upstream import UpstreamProcess

TOKENS = 64
DELAY_MS = 50
PRICE_OUT = 2_000_000
"""Two base units per output token: a charge is twice the tokens, exactly."""
STALL_MS = 20_000
"""Far past the buyer's patience: the engine answers nothing unless its request is closed."""
PATIENCE_S = 0.3
#: The request, and where the first provider's engine stalls: a request not streamed before
#: its answer; a stream after its headers and the chat stream's role chunk, or before its
#: headers. The market's first-token timeout (120 s) is far off in all three.
CASES: dict[str, dict[str, Any]] = {
    "not_streamed": {"stream": False, "stall": {"stall_ms": STALL_MS}},
    "stream_after_the_role_chunk": {"stream": True, "stall": {"stall_ms": STALL_MS}},
    "stream_before_the_headers": {
        "stream": True,
        "stall": {"stall_ms": STALL_MS, "stall_headers": True},
    },
}


def _leave_after(market: Market, tokens: int) -> int:
    """Streams a chat completion and disconnects once `tokens` tokens arrived; how many did."""
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Count."}],
        "max_tokens": TOKENS,
        "stream": True,
    }
    headers = {"Authorization": f"Bearer {market.api_key}"}
    seen = 0
    url = f"{market.url}/chat/completions"
    with httpx.stream("POST", url, json=body, headers=headers) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: {") and json.loads(line[6:])["choices"][0]["delta"].get(
                "content"
            ):
                seen += 1
                if seen == tokens:
                    break
    return seen


def _ended_job(market: Market, timeout_s: float = 10.0) -> Job:
    """The market's only job, once it is no longer open."""
    deadline = time.monotonic() + timeout_s
    while True:
        with session_scope(market.sessions) as session:
            job = session.scalars(select(Job)).one()
            if job.status is not JobStatus.ROUTED or time.monotonic() > deadline:
                session.expunge(job)
                return job
        time.sleep(0.02)


def test_a_buyer_who_leaves_pays_for_the_tokens_made_until_the_engine_stopped(
    market: Market, agents: dict[str, Agent], upstream: UpstreamProcess
) -> None:
    agent = agents[PROVIDER_A]
    market.routing.pin([agent.offer(0, PRICE_OUT)])
    upstream.control(completion_tokens=TOKENS, delay_ms=DELAY_MS)
    start = time.monotonic()
    assert _leave_after(market, 3) == 3
    job = _ended_job(market)
    assert time.monotonic() - start < TOKENS * DELAY_MS / 1000 / 2  # stopped early
    assert (job.status, job.error) == (JobStatus.COMPLETED, "interrupted (cancelled)")
    with session_scope(market.sessions) as session:
        receipt = session.get(Receipt, job.id)
        assert receipt is not None
        message = json.loads(receipt.envelope)["message"]
        assert (message["status"], message["interrupted_reason"]) == ("interrupted", "cancelled")
        made = receipt.completion_tokens
        assert 3 <= made < TOKENS
        assert message["output_digest"] == output_digest(list(range(1000, 1000 + made)))
        assert receipt.charge == 2 * made
        hold = ledger.get_hold(session, job.id)
        assert (hold.status.value, hold.charged) == ("settled", 2 * made)
        statement = ledger.statement(session, market.buyer)
        assert (statement.available, statement.held) == (DEPOSIT - 2 * made, 0)
        ledger.check_ledger(session)
    assert stored_receipts(agent, job.id) == ["cancelled"]  # the one receipt, charged
    assert agent_idle(agent)
    assert market.routing.pinned[0].in_flight == 0


@pytest.fixture
def old_agent(agents: dict[str, Agent], monkeypatch: pytest.MonkeyPatch) -> Agent:
    """Provider A as an agent from before `POST /jobs/cancel`: a cancel is a 404."""
    agent = agents[PROVIDER_A]

    def no_cancel(request: Request) -> Response:
        return JSONResponse({"detail": "Not Found"}, status_code=404)

    monkeypatch.setattr(agent.jobs, "cancel", no_cancel)
    return agent


def test_a_stream_the_agent_does_not_cancel_is_read_to_its_end_and_charged(
    market: Market, old_agent: Agent, upstream: UpstreamProcess
) -> None:
    agent = old_agent
    market.routing.pin([agent.offer(0, PRICE_OUT)])
    upstream.control(completion_tokens=16, delay_ms=DELAY_MS)
    assert _leave_after(market, 2) == 2
    job = _ended_job(market)
    assert (job.status, job.error) == (JobStatus.COMPLETED, None)
    with session_scope(market.sessions) as session:
        receipt = session.get(Receipt, job.id)
        assert receipt is not None
        assert (receipt.completion_tokens, receipt.charge) == (16, 32)
        ledger.check_ledger(session)
    assert stored_receipts(agent, job.id) == [None]  # complete
    assert agent_idle(agent)


def test_a_stream_that_does_not_end_in_time_after_the_buyer_left_is_released(
    market: Market,
    old_agent: Agent,
    upstream: UpstreamProcess,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    agent = old_agent
    hasty = market.runtime.settings.model_copy(update={"stream_cancel_wait_s": 0.3})
    monkeypatch.setattr(market.runtime, "settings", hasty)
    market.routing.pin([agent.offer(0, PRICE_OUT)])
    upstream.control(completion_tokens=TOKENS, delay_ms=DELAY_MS)
    assert _leave_after(market, 2) == 2
    job = _ended_job(market)
    assert job.status is JobStatus.FAILED
    assert job.error == "the buyer left and the stream did not end in time"
    with session_scope(market.sessions) as session:
        assert session.get(Receipt, job.id) is None
        assert ledger.get_hold(session, job.id).status.value == "released"
        statement = ledger.statement(session, market.buyer)
        assert (statement.available, statement.held, statement.charged) == (DEPOSIT, 0, 0)
    assert agent_idle(agent)
    # The agent saw the market go away: its receipt stays in its outbox, unpaid.
    assert stored_receipts(agent, job.id) == ["client_disconnected"]
    assert market.routing.pinned[0].in_flight == 0
    # ... and its receipt sync learns that the market will not pay it, and why.
    result, outbox = sync_agent_receipts(
        agent, market.served.url, market.runtime, {job.id}, tmp_path
    )
    assert result.states == {"closed": 1}
    assert json.loads(outbox.unpaid_path.read_text()) == {
        "job_id": job.id,
        "state": "closed",
        "detail": "the buyer left and the stream did not end in time",
    }
    assert outbox.count_unsent() == 0


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_a_buyer_who_leaves_before_the_answer_is_not_charged_and_the_engine_stops(
    market: Market, agents: dict[str, Agent], upstream: UpstreamProcess, case: dict[str, Any]
) -> None:
    pin_a_then_b(market, agents)
    upstream.control(**case["stall"], times=1)  # A's engine stalls; B's would answer
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Say something."}],
        "max_tokens": 4,
        "stream": case["stream"],
    }
    headers = {"Authorization": f"Bearer {market.api_key}"}
    start = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):  # the buyer gives up, and hangs up
        httpx.post(f"{market.url}/chat/completions", json=body, headers=headers, timeout=PATIENCE_S)
    assert settles(lambda: jobs_of(market)[0].status is JobStatus.FAILED)
    assert time.monotonic() - start < STALL_MS / 1000 / 4
    (job,) = jobs_of(market)  # not sent on to B: nobody is waiting for the answer
    assert (job.provider_address, job.error) == (PROVIDER_A, BUYER_LEFT)
    nothing_charged(market, job.id)
    assert settles(lambda: [o.in_flight for o in market.routing.pinned] == [0, 0])
    # The agent closed the engine's request long before the stall would have ended, and
    # signed no receipt: nothing reached the buyer.
    assert settles(lambda: upstream.running() == 0)
    assert agent_idle(agents[PROVIDER_A])
    assert stored_receipts(agents[PROVIDER_A], job.id) == []
    assert len(jobs_of(market)) == 1
