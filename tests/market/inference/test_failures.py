"""Errors in OpenAI's envelope, fallback to another provider, and a stream that dies."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionChunk, ChatCompletionMessageParam

from market.db import session_scope
from market.demo.ports import free_port
from market.inference.errors import EngineError, engine_error
from market.jobs import service as jobs
from market.jobs.models import JobStatus, Receipt
from market.ledger import service as ledger
from protocol.messages import output_digest
from tests.market.inference.conftest import (
    DEPOSIT,
    PROVIDER_A,
    PROVIDER_B,
    Market,
    assert_failed_over,
    fund,
    jobs_of,
    pin_a_then_b,
)
from tests.market.inference.servers import MODEL, Agent
from tests.support.openai_upstream import UpstreamProcess

MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Say something."}]


def _post(market: Market, body: dict[str, object], key: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(f"{market.url}/chat/completions", json=body, headers=headers)


def test_error_statuses_use_openais_envelope(market: Market, agents: dict[str, Agent]) -> None:
    market.routing.pin([agents[PROVIDER_A].offer(1_000_000, 1_000_000, region="DE")])
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 16}
    missing = _post(market, body, None)
    assert missing.status_code == 401
    assert missing.json()["error"]["type"] == "authentication_error"
    assert _post(market, body, "sk-jm-wrong").status_code == 401
    bad = _post(market, {**body, "provider": {"sortt": "price"}}, market.api_key)
    assert bad.status_code == 400
    assert bad.json()["error"]["param"] == "provider.sortt"
    unknown = _post(market, {**body, "model": "nope"}, market.api_key)
    assert (unknown.status_code, unknown.json()["error"]["code"]) == (404, "model_not_found")
    none = _post(market, {**body, "provider": {"regions": ["FR"]}}, market.api_key)
    assert none.status_code == 503
    _, poor_key = fund(market.sessions, 5)
    poor = _post(market, body, poor_key)
    assert poor.status_code == 402
    assert poor.json()["error"]["type"] == "insufficient_quota"
    client = openai.OpenAI(base_url=market.url, api_key="sk-jm-wrong")
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model=MODEL, messages=MESSAGES)
    models = httpx.get(f"{market.url}/models").json()["data"]
    assert [m["id"] for m in models] == [MODEL]
    assert models[0]["market"]["providers"] == 1
    with session_scope(market.sessions) as session:
        assert ledger.statement(session, market.buyer).available == DEPOSIT


def test_models_are_retrieved_one_by_one_and_unknown_urls_use_the_envelope(
    market: Market, agents: dict[str, Agent]
) -> None:
    market.routing.pin([agents[PROVIDER_A].offer(1_000_000, 2_000_000)])
    client = openai.OpenAI(base_url=market.url, api_key=market.api_key)
    model = client.models.retrieve(MODEL)
    assert model.id == MODEL
    assert (model.model_extra or {})["market"]["price_out_per_mtok"] == {
        "min": 2_000_000,
        "max": 2_000_000,
    }
    with pytest.raises(openai.NotFoundError) as missing:
        client.models.retrieve("meta-llama/not-offered")
    assert missing.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError) as unknown:
        client.embeddings.create(model=MODEL, input="hi")
    assert unknown.value.code == "unknown_url"
    assert unknown.value.message.endswith("Invalid URL (POST /v1/embeddings)")
    wrong = httpx.get(f"{market.url}/chat/completions")
    assert wrong.status_code == 405
    assert wrong.json()["error"] == {
        "message": "Invalid URL (GET /v1/chat/completions)",
        "type": "invalid_request_error",
        "param": None,
        "code": "method_not_allowed",
    }


def test_falls_back_to_the_next_provider_when_the_first_is_down(
    market: Market, agents: dict[str, Agent]
) -> None:
    down = agents[PROVIDER_A].offer(1_000_000, 1_000_000)
    down.job_url = f"http://127.0.0.1:{free_port()}/jobs"  # nothing listens there
    market.routing.pin([down, agents[PROVIDER_B].offer(2_000_000, 2_000_000)])
    client = openai.OpenAI(base_url=market.url, api_key=market.api_key)
    result = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=16)
    assert (result.model_extra or {})["provider"]["address"] == PROVIDER_B
    failed, served = jobs_of(market)
    assert (failed.provider_address, failed.status) == (PROVIDER_A, JobStatus.FAILED)
    assert (served.provider_address, served.status) == (PROVIDER_B, JobStatus.COMPLETED)
    assert failed.id != served.id
    with session_scope(market.sessions) as session:
        assert ledger.get_hold(session, failed.id).status.value == "released"
        charge = ledger.get_hold(session, served.id).charged or 0
        assert ledger.statement(session, market.buyer).available == DEPOSIT - charge
    assert down.in_flight == 0


def _die_midway(market: Market) -> list[ChatCompletionChunk]:
    client = openai.OpenAI(base_url=market.url, api_key=market.api_key, max_retries=0)
    stream = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=16, stream=True
    )
    seen: list[ChatCompletionChunk] = []

    def consume() -> None:
        seen.extend(stream)

    with pytest.raises(openai.APIError):
        consume()
    return seen


def test_stream_that_dies_midway_is_charged_for_the_delivered_tokens(
    market: Market, agents: dict[str, Agent], upstream: UpstreamProcess
) -> None:
    market.routing.pin([agents[PROVIDER_A].offer(1_000_000, 1_500_000)])
    upstream.control(die_after_chunks=3)  # the role chunk, then tokens t0 and t1
    seen = _die_midway(market)
    assert [c.choices[0].delta.content for c in seen] == ["", "t0 ", "t1 "]
    (job,) = jobs_of(market)
    assert (job.status, job.error) == (JobStatus.COMPLETED, "interrupted (engine_died)")
    with session_scope(market.sessions) as session:
        receipt = session.get(Receipt, job.id)
        assert receipt is not None
        assert (receipt.prompt_tokens, receipt.completion_tokens) == (0, 2)
        message = json.loads(receipt.envelope)["message"]
        assert (message["status"], message["interrupted_reason"]) == ("interrupted", "engine_died")
        assert message["output_digest"] == output_digest([1000, 1001])
        charge = 3  # 2 tokens at 1.5 base units each: exactly, to the base unit
        assert receipt.charge == charge
        assert receipt.epoch is None  # unsettled: the next epoch close takes it
        hold = ledger.get_hold(session, job.id)
        assert (hold.status.value, hold.charged) == ("settled", charge)
        statement = ledger.statement(session, market.buyer)
        assert (statement.available, statement.held) == (DEPOSIT - charge, 0)
        ledger.check_ledger(session)
        read = jobs.get_job(session, market.buyer, job.id)
        assert read.receipt is not None
        assert (read.receipt.status, read.receipt.interrupted_reason) == (
            "interrupted",
            "engine_died",
        )
    assert market.routing.pinned[0].in_flight == 0


def _chunk(delta: dict[str, Any], token_ids: list[int] | None = None) -> str:
    """One engine stream event of a chat completion, as vLLM writes it."""
    choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": None}
    if token_ids is not None:
        choice["token_ids"] = token_ids
    body = {"id": "c", "object": "chat.completion.chunk", "model": MODEL, "choices": [choice]}
    return f"data: {json.dumps(body)}\n\n"


ROLE = _chunk({"role": "assistant", "content": ""})
KV_CACHE: dict[str, Any] = {"message": "The engine ran out of KV cache."}
KV_CACHE |= {"type": "InternalServerError", "param": None, "code": 500}
#: Engine streams that fail after the role chunk, before any token reached the buyer.
BEFORE_A_TOKEN: dict[str, dict[str, Any]] = {
    "dies": {"die_after_chunks": 1},
    "errs": {"stream_chunks": [ROLE, f"data: {json.dumps({'error': KV_CACHE})}\n\n"]},
}


@pytest.mark.parametrize("failure", BEFORE_A_TOKEN.values(), ids=BEFORE_A_TOKEN.keys())
def test_stream_that_fails_before_a_token_goes_to_the_next_provider(
    market: Market, agents: dict[str, Agent], upstream: UpstreamProcess, failure: dict[str, Any]
) -> None:
    pin_a_then_b(market, agents)
    upstream.control(**failure, times=1)  # the first provider's engine fails, then all is well
    client = openai.OpenAI(base_url=market.url, api_key=market.api_key, max_retries=0)
    stream = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=4, stream=True
    )
    failed = assert_failed_over(market, list(stream), stream.response.headers["x-request-id"])
    assert (failed.error or "").startswith("provider stream failed: upstream_")


@pytest.mark.parametrize("failure", BEFORE_A_TOKEN.values(), ids=BEFORE_A_TOKEN.keys())
def test_stream_that_fails_before_a_token_everywhere_is_a_502_and_not_charged(
    market: Market, agents: dict[str, Agent], upstream: UpstreamProcess, failure: dict[str, Any]
) -> None:
    market.routing.pin([agents[PROVIDER_A].offer(1_000_000, 1_000_000)])
    upstream.control(**failure)
    client = openai.OpenAI(base_url=market.url, api_key=market.api_key, max_retries=0)
    with pytest.raises(openai.InternalServerError) as failed:
        client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=16, stream=True)
    (job,) = jobs_of(market)
    error = failed.value
    assert (error.status_code, error.request_id) == (502, job.id)
    assert isinstance(error.body, dict)
    assert error.body["code"] == "provider_unavailable"
    assert PROVIDER_A in error.body["message"]
    assert job.status is JobStatus.FAILED
    with session_scope(market.sessions) as session:
        assert ledger.get_hold(session, job.id).status.value == "released"
        assert session.get(Receipt, job.id) is None
        statement = ledger.statement(session, market.buyer)
        assert (statement.available, statement.held, statement.charged) == (DEPOSIT, 0, 0)
    assert market.routing.pinned[0].in_flight == 0


def test_interrupted_receipt_for_other_tokens_is_rejected(
    market: Market,
    agents: dict[str, Agent],
    upstream: UpstreamProcess,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    agent = agents[PROVIDER_A]
    issuer = agent.jobs.issuer
    honest = issuer.issue_interrupted

    def short(job: Any, seen: Any, delivered: int, at: int, reason: str) -> Any:
        return honest(job, seen, delivered - 1, at, reason)  # claims one token too few

    monkeypatch.setattr(issuer, "issue_interrupted", short)
    market.routing.pin([agent.offer(1_000_000, 1_000_000)])
    upstream.control(die_after_chunks=3)
    assert len(_die_midway(market)) == 3
    (job,) = jobs_of(market)
    assert job.status is JobStatus.FAILED
    with session_scope(market.sessions) as session:
        assert session.get(Receipt, job.id) is None
        (rejected,) = jobs.rejected_receipts(session, job.id)
        assert rejected.reason == "delivered_mismatch"
        assert ledger.get_hold(session, job.id).status.value == "released"
        statement = ledger.statement(session, market.buyer)
        assert (statement.available, statement.held, statement.charged) == (DEPOSIT, 0, 0)


def test_agent_at_capacity_fails_over_to_the_next(market: Market, agents: dict[str, Agent]) -> None:
    busy = agents[PROVIDER_A]
    market.routing.pin(
        [busy.offer(1_000_000, 1_000_000), agents[PROVIDER_B].offer(2_000_000, 2_000_000)]
    )
    busy.jobs.slots.limit = 0
    try:
        client = openai.OpenAI(base_url=market.url, api_key=market.api_key, max_retries=0)
        result = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=16)
    finally:
        busy.jobs.slots.limit = None
    assert (result.model_extra or {})["provider"]["address"] == PROVIDER_B
    refused, served = jobs_of(market)
    assert (refused.provider_address, refused.status) == (PROVIDER_A, JobStatus.FAILED)
    assert "429" in (refused.error or "")
    assert served.status is JobStatus.COMPLETED
    with session_scope(market.sessions) as session:
        assert ledger.get_hold(session, refused.id).status.value == "released"
    assert all(e.message.job_id != refused.id for e in busy.jobs.outbox.all())
    assert market.routing.pinned[0].in_flight == 0


def test_every_agent_at_capacity_is_a_503_with_retry_after(
    market: Market, agents: dict[str, Agent]
) -> None:
    busy = agents[PROVIDER_A]
    market.routing.pin([busy.offer(1_000_000, 1_000_000)])
    busy.jobs.slots.limit = 0
    try:
        body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 16}
        response = _post(market, body, market.api_key)
    finally:
        busy.jobs.slots.limit = None
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    error = response.json()["error"]
    assert (error["type"], error["code"]) == ("server_error", "providers_at_capacity")
    (job,) = jobs_of(market)
    assert job.status is JobStatus.FAILED
    with session_scope(market.sessions) as session:
        assert ledger.get_hold(session, job.id).status.value == "released"
        statement = ledger.statement(session, market.buyer)
        assert (statement.available, statement.held, statement.charged) == (DEPOSIT, 0, 0)
    assert market.routing.pinned[0].in_flight == 0


TOO_LONG = (
    "This model's maximum context length is 2048 tokens. However, you requested 4096 tokens "
    "(2048 in the messages, 2048 in the completion). Please reduce the length of the messages "
    "or completion."
)
#: vLLM's error bodies: the current `{"error": {...}}` and the older flat `ErrorResponse`.
VLLM_ERRORS: list[dict[str, Any]] = [
    {"error": {"message": TOO_LONG, "type": "BadRequestError", "param": None, "code": 400}},
    {"object": "error", "message": TOO_LONG, "type": "BadRequestError", "param": None, "code": 400},
]


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("body", VLLM_ERRORS, ids=["error object", "flat"])
def test_an_engine_refusal_is_passed_on_as_its_message(
    market: Market,
    agents: dict[str, Agent],
    upstream: UpstreamProcess,
    body: dict[str, Any],
    stream: bool,
) -> None:
    market.routing.pin([agents[PROVIDER_A].offer(1_000_000, 1_000_000)])
    upstream.control(status=400, error_body=body)
    client = openai.OpenAI(base_url=market.url, api_key=market.api_key, max_retries=0)
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=16, stream=stream)
    error = refused.value
    assert error.status_code == 400
    assert error.body == {
        "message": TOO_LONG,
        "type": "invalid_request_error",
        "param": None,
        "code": "upstream_rejected",
    }
    (job,) = jobs_of(market)
    assert job.status is JobStatus.FAILED
    with session_scope(market.sessions) as session:
        assert ledger.get_hold(session, job.id).status.value == "released"


@pytest.mark.parametrize("status", [404, 429])
def test_an_engine_refusal_of_the_providers_own_goes_to_the_next_provider(
    market: Market, agents: dict[str, Agent], upstream: UpstreamProcess, status: int
) -> None:
    """404 (the model is not served there) and 429 (the engine is busy) say more of the
    provider than of the request."""
    pin_a_then_b(market, agents)
    error = {"message": f"engine says {status}", "type": "BadRequestError", "code": status}
    upstream.control(status=status, error_body={"error": error}, times=1)
    client = openai.OpenAI(base_url=market.url, api_key=market.api_key, max_retries=0)
    result = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=4)
    assert (result.model_extra or {})["provider"]["address"] == PROVIDER_B
    refused, served = jobs_of(market)
    assert (refused.provider_address, refused.status) == (PROVIDER_A, JobStatus.FAILED)
    assert f"engine answered {status}: engine says {status}" in (refused.error or "")
    assert served.status is JobStatus.COMPLETED
    with session_scope(market.sessions) as session:
        assert ledger.get_hold(session, refused.id).status.value == "released"


def test_an_engine_refusal_keeps_its_param_and_openai_type(
    market: Market, agents: dict[str, Agent], upstream: UpstreamProcess
) -> None:
    market.routing.pin([agents[PROVIDER_A].offer(1_000_000, 1_000_000)])
    error: dict[str, Any] = {"message": "temperature must be non-negative"}
    error |= {"type": "invalid_request_error"}
    error |= {"param": "temperature", "code": "invalid_value"}
    upstream.control(status=422, error_body={"error": error})
    response = _post(
        market, {"model": MODEL, "messages": MESSAGES, "temperature": -1}, market.api_key
    )
    assert response.status_code == 422
    assert response.json() == {"error": error}


def test_an_engine_refusal_inside_the_stream_before_a_token_is_the_buyers_400(
    market: Market, agents: dict[str, Agent], upstream: UpstreamProcess
) -> None:
    """vLLM reports an error it meets once streaming as an event (HTTP 200 already sent),
    `{"error": {..., "code": 400}}`: one that names a 4xx is the request's fault, so no other
    provider is tried."""
    pin_a_then_b(market, agents)
    refusal = f"data: {json.dumps(VLLM_ERRORS[0])}\n\n"
    upstream.control(stream_chunks=[ROLE, refusal, "data: [DONE]\n\n"], times=1)
    client = openai.OpenAI(base_url=market.url, api_key=market.api_key, max_retries=0)
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=4, stream=True)
    (job,) = jobs_of(market)  # the second provider, whose engine would have served, was not tried
    error = refused.value
    assert (error.status_code, error.request_id) == (400, job.id)
    assert error.body == {
        "message": TOO_LONG,
        "type": "invalid_request_error",
        "param": None,
        "code": "upstream_rejected",
    }
    assert (job.provider_address, job.status) == (PROVIDER_A, JobStatus.FAILED)
    with session_scope(market.sessions) as session:
        assert ledger.get_hold(session, job.id).status.value == "released"
        assert session.get(Receipt, job.id) is None
        statement = ledger.statement(session, market.buyer)
        assert (statement.available, statement.held, statement.charged) == (DEPOSIT, 0, 0)
    assert [offer.in_flight for offer in market.routing.pinned] == [0, 0]


def test_an_engine_error_inside_the_stream_is_passed_on_as_its_message(
    market: Market, agents: dict[str, Agent], upstream: UpstreamProcess
) -> None:
    market.routing.pin([agents[PROVIDER_A].offer(1_000_000, 1_000_000)])
    token = _chunk({"content": "t0 "}, [1000])
    chunks = [ROLE, token, f"data: {json.dumps({'error': KV_CACHE})}\n\n"]
    upstream.control(stream_chunks=chunks)
    client = openai.OpenAI(base_url=market.url, api_key=market.api_key, max_retries=0)
    stream = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=16, stream=True
    )
    seen: list[ChatCompletionChunk] = []
    with pytest.raises(openai.APIError) as failed:
        seen.extend(stream)
    assert [c.choices[0].delta.content for c in seen] == ["", "t0 "]
    assert failed.value.message == "The engine ran out of KV cache."
    assert failed.value.body == {
        "message": "The engine ran out of KV cache.",
        "type": "server_error",
        "param": None,
        "code": "upstream_error",
    }
    (job,) = jobs_of(market)
    assert (job.status, job.error) == (JobStatus.COMPLETED, "interrupted (engine_error)")
    with session_scope(market.sessions) as session:
        receipt = session.get(Receipt, job.id)
        assert receipt is not None
        assert receipt.completion_tokens == 1  # the token the buyer got is paid for


def test_an_engine_error_is_found_after_a_prefix_and_in_a_body_cut_short() -> None:
    body = json.dumps({"error": {"message": "CUDA out of memory", "code": 500}})
    assert engine_error(f"engine answered 500: {body}") == (
        "engine answered 500: ",
        EngineError("CUDA out of memory"),
    )
    cut = json.dumps(VLLM_ERRORS[1])[:-30]  # the agent keeps the engine's first bytes only
    assert engine_error(cut) == ("", EngineError(TOO_LONG))
    assert engine_error("engine unreachable: ClientConnectorError()") is None
    assert engine_error('{"detail": "Not Found"}') is None
