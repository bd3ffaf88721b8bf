"""Refused tickets: each check answers its status and code, and never reaches the engine."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import httpx
import pytest

from protocol.keys import signing_key_from_seed
from protocol.messages import Domain
from provider_agent.jobs.tickets import TICKET_HEADER
from tests.provider_agent.jobs.harness import OTHER_PROVIDER, Harness, chat_body
from tests.support.openai_upstream import UpstreamProcess

OTHER_DOMAIN = Domain(chain_id=1, settlement_contract="0x5FbDB2315678afecb367f032d93F642f64180aa3")


def _refused(
    harness: Harness,
    upstream: UpstreamProcess,
    headers: dict[str, str],
    body: bytes,
    status: int,
    code: str,
) -> None:
    upstream.control(status=599)  # any request reaching the engine would fail loudly
    response = harness.post("/jobs/chat/completions", body, headers)
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code
    assert list(harness.service.outbox.all()) == []
    assert len(harness.service.checker.replay_cache) == 0


def test_missing_header(harness: Harness, upstream: UpstreamProcess) -> None:
    _refused(harness, upstream, {}, chat_body(), 401, "missing_ticket")


def test_garbage_header(harness: Harness, upstream: UpstreamProcess) -> None:
    headers = {"X-Job-Ticket": "bm90IGEgdGlja2V0"}
    _refused(harness, upstream, headers, chat_body(), 400, "malformed_ticket")


def test_signed_by_another_key(harness: Harness, upstream: UpstreamProcess) -> None:
    body = chat_body()
    forger = signing_key_from_seed("0x" + "03" * 32)
    headers = harness.header(harness.ticket(body), key=forger)
    _refused(harness, upstream, headers, body, 401, "wrong_signer")


def test_tampered_signature(harness: Harness, upstream: UpstreamProcess) -> None:
    body = chat_body()
    headers = harness.header(harness.ticket(body))
    raw = base64.urlsafe_b64decode(headers["X-Job-Ticket"] + "==")
    envelope = json.loads(raw)
    envelope["message"]["max_tokens"] = 4096
    tampered = base64.urlsafe_b64encode(json.dumps(envelope).encode()).decode()
    _refused(harness, upstream, {"X-Job-Ticket": tampered}, body, 401, "bad_signature")


@pytest.mark.parametrize(
    ("overrides", "status", "code"),
    [
        ({"domain": OTHER_DOMAIN}, 403, "wrong_domain"),
        ({"provider": OTHER_PROVIDER}, 403, "wrong_provider"),
        ({"model": "other-model"}, 400, "model_mismatch"),
        ({"request_digest": "0x" + "00" * 32}, 400, "digest_mismatch"),
        ({"max_tokens": 8}, 400, "max_tokens_exceeded"),
    ],
)
def test_ticket_field_checks(
    harness: Harness, upstream: UpstreamProcess, overrides: dict[str, Any], status: int, code: str
) -> None:
    body = chat_body(max_tokens=16)
    headers = harness.header(harness.ticket(body, **overrides))
    _refused(harness, upstream, headers, body, status, code)


def test_body_model_must_match(harness: Harness, upstream: UpstreamProcess) -> None:
    body = chat_body(model="other-model")
    _refused(harness, upstream, harness.header(harness.ticket(body)), body, 400, "model_mismatch")


def test_expired(harness: Harness, upstream: UpstreamProcess) -> None:
    body = chat_body()
    headers = harness.header(harness.ticket(body))
    harness.now[0] += 30_000
    _refused(harness, upstream, headers, body, 410, "expired_message")


def test_issued_in_the_future(harness: Harness, upstream: UpstreamProcess) -> None:
    body = chat_body()
    now = harness.now[0]
    ticket = harness.ticket(body, issued_at=now + 60_000, expires_at=now + 90_000)
    _refused(harness, upstream, harness.header(ticket), body, 400, "not_yet_valid")


def test_replay_is_refused_then_forgotten_after_expiry(harness: Harness) -> None:
    body = chat_body(max_tokens=2)
    ticket = harness.ticket(body)
    headers = harness.header(ticket)
    first, second = harness.send(
        [("/jobs/chat/completions", body, headers), ("/jobs/chat/completions", body, headers)]
    )
    assert first.status_code == 200
    assert second.status_code == 409
    assert second.json()["error"]["code"] == "replayed_ticket"
    assert len(list(harness.service.outbox.all())) == 1
    cache = harness.service.checker.replay_cache
    later = harness.ticket(body, issued_at=ticket.expires_at, expires_at=ticket.expires_at + 1)
    cache.claim(later.job_id, later.expires_at, now_ms=ticket.expires_at)
    assert len(cache) == 1  # the first job id was forgotten once its ticket expired


def test_at_capacity_is_refused_before_the_engine_and_keeps_the_job_id(
    harness: Harness, upstream: UpstreamProcess
) -> None:
    harness.service.slots.limit = 1
    taken = harness.service.slots.acquire()  # a job in progress
    body = chat_body(max_tokens=2)
    headers = harness.header(harness.ticket(body))
    upstream.control(status=599)
    refused = harness.post("/jobs/chat/completions", body, headers)
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "at_capacity"
    assert refused.headers["retry-after"] == "1"
    assert list(harness.service.outbox.all()) == []
    assert len(harness.service.checker.replay_cache) == 0
    taken.release()
    assert harness.service.slots.in_use == 0
    job = harness.service.checker.accept(headers[TICKET_HEADER], body)  # the id is unspent
    assert len(harness.service.checker.replay_cache) == 1
    assert job.ticket.max_tokens == 64


def test_bad_ticket_at_capacity_is_refused_for_the_ticket(
    harness: Harness, upstream: UpstreamProcess
) -> None:
    harness.service.slots.limit = 0
    body = chat_body(max_tokens=2)
    _refused(harness, upstream, {}, body, 401, "missing_ticket")


def test_oversized_body_is_refused_before_the_ticket(
    harness: Harness, upstream: UpstreamProcess
) -> None:
    body = chat_body()
    headers = harness.header(harness.ticket(body))
    oversized = body[:-1] + b" " * (4 * 1024 * 1024) + b"}"
    _refused(harness, upstream, headers, oversized, 413, "request_too_large")


def test_unknown_routes_and_methods_answer_in_the_error_shape(
    harness: Harness, upstream: UpstreamProcess
) -> None:
    _refused(harness, upstream, {}, chat_body(), 401, "missing_ticket")  # the app is up
    unknown = harness.post("/jobs/embeddings", chat_body(), {})
    assert (unknown.status_code, unknown.json()["error"]["code"]) == (404, "not_found")
    assert "POST /jobs/embeddings" in unknown.json()["error"]["message"]

    async def get() -> httpx.Response:
        transport = httpx.ASGITransport(app=harness.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://agent") as client:
            return await client.get("/jobs/chat/completions")

    wrong = asyncio.run(get())
    assert (wrong.status_code, wrong.json()["error"]["code"]) == (405, "method_not_allowed")
    assert wrong.headers["allow"] == "POST"


@pytest.mark.parametrize("include", [False, 0, "false", None])
def test_a_body_leaving_out_the_reasoning_is_refused(
    harness: Harness, upstream: UpstreamProcess, include: object
) -> None:
    # vLLM with a reasoning parser sends no token ids then: the answer could not be receipted
    body = chat_body(include_reasoning=include)
    _refused(harness, upstream, harness.header(harness.ticket(body)), body, 400, "invalid_body")
