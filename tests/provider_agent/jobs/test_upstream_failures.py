"""Engine failures: 502 before the first byte; mid-stream, an interrupted receipt for the
tokens delivered (none if none were), then `event: error`."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx

from protocol.keys import public_key_hex
from protocol.messages import (
    Receipt,
    check_receipt_matches_ticket,
    output_digest,
    parse_signed,
    verify,
)
from provider_agent.jobs.relay import open_upstream, relay_stream, upstream_payload
from provider_agent.jobs.tickets import TICKET_HEADER
from tests.provider_agent.jobs.harness import (
    DOMAIN,
    NOW_MS,
    PROVIDER_KEY,
    Harness,
    chat_body,
    run,
    sse_events,
)
from tests.support.openai_upstream import UpstreamProcess, free_port


def _verified(data: str) -> Receipt:
    return verify(parse_signed(data, Receipt), public_key_hex(PROVIDER_KEY), DOMAIN)


def test_engine_unreachable(harness: Harness) -> None:
    down = Harness(f"http://127.0.0.1:{free_port()}/v1", harness.data_dir)
    body = chat_body()
    response = down.post("/jobs/chat/completions", body, down.header(down.ticket(body)))
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "upstream_unreachable"
    assert down.service.outbox.all() == []


def test_engine_5xx(harness: Harness, upstream: UpstreamProcess) -> None:
    upstream.control(status=503)
    body = chat_body(stream=True)
    response = harness.post("/jobs/chat/completions", body, harness.header(harness.ticket(body)))
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "upstream_error"
    assert harness.service.outbox.all() == []


def test_engine_4xx_is_passed_on(harness: Harness, upstream: UpstreamProcess) -> None:
    upstream.control(status=400)
    body = chat_body()
    response = harness.post("/jobs/chat/completions", body, harness.header(harness.ticket(body)))
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "upstream_rejected"


def test_engine_dies_mid_stream_gives_interrupted_receipt(
    harness: Harness, upstream: UpstreamProcess
) -> None:
    upstream.control(die_after_chunks=3)  # role chunk, t0, t1: two tokens delivered
    body = chat_body(stream=True)
    ticket = harness.ticket(body)
    response = harness.post("/jobs/chat/completions", body, harness.header(ticket))
    assert response.status_code == 200
    events = sse_events(response.text)
    names = [name for name, _ in events]
    assert names == ["message", "message", "message", "receipt", "error"]
    assert json.loads(events[-1][1])["error"]["code"] == "upstream_died"
    assert "[DONE]" not in response.text
    relayed = [
        token
        for _, data in events[:3]
        for choice in json.loads(data)["choices"]
        for token in choice.get("token_ids") or ()
    ]
    assert relayed == [1000, 1001]
    receipt = _verified(events[3][1])
    check_receipt_matches_ticket(receipt, ticket)
    assert receipt.status == "interrupted"
    assert receipt.interrupted_reason == "engine_died"
    assert receipt.completion_tokens == 2
    assert receipt.output_digest == output_digest([1000, 1001])
    assert receipt.prompt_tokens == 0  # no usage and no prompt_token_ids from this engine
    assert receipt.first_token_at == NOW_MS
    assert receipt.energy.method == "unmeasured"
    assert [e.message for e in harness.service.outbox.unsent()] == [receipt]
    assert len(harness.service.tracker) == 0


def test_engine_dies_before_any_token_gives_no_receipt(
    harness: Harness, upstream: UpstreamProcess
) -> None:
    upstream.control(die_after_chunks=1)  # only the role chunk, no token
    body = chat_body(stream=True)
    response = harness.post("/jobs/chat/completions", body, harness.header(harness.ticket(body)))
    names = [name for name, _ in sse_events(response.text)]
    assert names == ["message", "error"]
    assert harness.service.outbox.all() == []
    assert len(harness.service.tracker) == 0


def test_engine_dies_mid_json(harness: Harness, upstream: UpstreamProcess) -> None:
    upstream.control(die_after_chunks=0)
    body = chat_body(stream=True)
    response = harness.post("/jobs/chat/completions", body, harness.header(harness.ticket(body)))
    events = sse_events(response.text)
    assert [name for name, _ in events] == ["error"]
    assert harness.service.outbox.all() == []


class _Stream(httpx.AsyncByteStream):
    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            yield chunk


def _event(payload: object) -> bytes:
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


def _chunk(ids: list[int], **extra: object) -> bytes:
    choice = {"index": 0, "delta": {"content": "x"}, "token_ids": ids, "finish_reason": None}
    return _event({"object": "chat.completion.chunk", "choices": [choice], **extra})


def test_engine_error_event_uses_prompt_token_ids(harness: Harness) -> None:
    chunks = [
        _chunk([], prompt_token_ids=[1, 2, 3, 4, 5, 6, 7]),
        _chunk([11, 12]),
        _chunk([13]) + _event({"error": {"message": "CUDA out of memory"}}) + _chunk([14]),
    ]

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=_Stream(chunks))

    mocked = Harness(harness.upstream_url, harness.data_dir, transport=httpx.MockTransport(answer))
    body = chat_body(stream=True)
    response = mocked.post("/jobs/chat/completions", body, mocked.header(mocked.ticket(body)))
    events = sse_events(response.text)
    assert [name for name, _ in events] == ["message"] * 3 + ["receipt", "error"]
    assert json.loads(events[-1][1])["error"]["code"] == "upstream_error"
    receipt = _verified(events[-2][1])
    assert receipt.interrupted_reason == "engine_error"
    assert receipt.completion_tokens == 3
    assert receipt.output_digest == output_digest([11, 12, 13])
    assert receipt.prompt_tokens == 7
    assert [e.message for e in mocked.service.outbox.all()] == [receipt]


def test_stream_ending_without_done_after_usage(harness: Harness) -> None:
    usage = {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11}
    chunks = [_chunk([21]), _chunk([22]), _event({"choices": [], "usage": usage})]

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=_Stream(chunks))

    mocked = Harness(harness.upstream_url, harness.data_dir, transport=httpx.MockTransport(answer))
    body = chat_body(stream=True)
    response = mocked.post("/jobs/chat/completions", body, mocked.header(mocked.ticket(body)))
    events = sse_events(response.text)
    assert [name for name, _ in events] == ["message"] * 3 + ["receipt", "error"]
    assert json.loads(events[-1][1])["error"]["code"] == "upstream_died"
    receipt = _verified(events[-2][1])
    assert receipt.interrupted_reason == "engine_died"
    assert (receipt.prompt_tokens, receipt.completion_tokens) == (9, 2)
    assert receipt.output_digest == output_digest([21, 22])


def test_market_disconnect_signs_receipt_into_outbox(
    harness: Harness, upstream: UpstreamProcess
) -> None:
    upstream.control(delay_ms=20)
    body = chat_body(stream=True)
    ticket = harness.ticket(body)
    service = harness.service

    async def go() -> list[bytes]:
        job = service.checker.accept(harness.header(ticket)[TICKET_HEADER], body)
        service.tracker.begin(job.ticket.job_id)
        response = await open_upstream(service.client, "/chat/completions", upstream_payload(job))
        events = relay_stream(
            response, job, service.issuer, service.now_ms, lambda: service.tracker.cancel("")
        )
        received = [await events.__anext__() for _ in range(4)]
        await events.aclose()  # the market went away while the 4th chunk was in flight
        await service.aclose()
        return received

    received = run(go())
    confirmed = b"".join(received[:-1]).decode()
    delivered = [
        token
        for _, data in sse_events(confirmed)
        for choice in json.loads(data)["choices"]
        for token in choice.get("token_ids") or ()
    ]
    assert delivered  # the role chunk and at least one token were confirmed
    (stored,) = service.outbox.all()
    receipt = _verified(stored.model_dump_json())
    check_receipt_matches_ticket(receipt, ticket)
    assert receipt.status == "interrupted"
    assert receipt.interrupted_reason == "client_disconnected"
    assert receipt.completion_tokens == len(delivered)
    assert receipt.output_digest == output_digest(delivered)
    assert len(service.tracker) == 0
