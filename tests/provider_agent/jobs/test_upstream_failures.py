"""Engine failures: 502 before the first byte; mid-stream, an interrupted receipt for the
tokens delivered (none if none were), then `event: error`."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections.abc import MutableMapping
from typing import Any, NamedTuple

import pytest

from market.demo.ports import free_port
from protocol.keys import public_key_hex
from protocol.messages import (
    JobTicket,
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
from tests.support.openai_upstream import UpstreamProcess


def _verified(data: str) -> Receipt:
    return verify(parse_signed(data, Receipt), public_key_hex(PROVIDER_KEY), DOMAIN)


def test_engine_unreachable(harness: Harness) -> None:
    down = Harness(f"http://127.0.0.1:{free_port()}/v1", harness.data_dir)
    body = chat_body()
    response = down.post("/jobs/chat/completions", body, down.header(down.ticket(body)))
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "upstream_unreachable"
    assert list(down.service.outbox.all()) == []


def test_engine_5xx(harness: Harness, upstream: UpstreamProcess) -> None:
    upstream.control(status=503)
    body = chat_body(stream=True)
    response = harness.post("/jobs/chat/completions", body, harness.header(harness.ticket(body)))
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "upstream_error"
    assert list(harness.service.outbox.all()) == []


def test_engine_4xx_is_passed_on(harness: Harness, upstream: UpstreamProcess) -> None:
    upstream.control(status=400)
    body = chat_body()
    response = harness.post("/jobs/chat/completions", body, harness.header(harness.ticket(body)))
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "upstream_rejected"


class Streamed(NamedTuple):
    """One streamed job's ticket and the agent's answer."""

    ticket: JobTicket
    text: str

    @property
    def events(self) -> list[tuple[str, str]]:
        """(event name, data) pairs of the answer."""
        return sse_events(self.text)

    @property
    def names(self) -> list[str]:
        """The answer's event names, in order."""
        return [name for name, _ in self.events]


def _stream_job(harness: Harness, upstream: UpstreamProcess, **settings: Any) -> Streamed:
    """Set the fake engine's behaviour, send one streamed chat job, read the whole answer."""
    upstream.control(**settings)
    body = chat_body(stream=True)
    ticket = harness.ticket(body)
    response = harness.post("/jobs/chat/completions", body, harness.header(ticket))
    assert response.status_code == 200
    return Streamed(ticket, response.text)


def _token_ids(events: list[tuple[str, str]]) -> list[int]:
    return [
        token
        for _, data in events
        for choice in json.loads(data)["choices"]
        for token in choice.get("token_ids") or ()
    ]


def test_engine_dies_mid_stream_gives_interrupted_receipt(
    harness: Harness, upstream: UpstreamProcess
) -> None:
    answer = _stream_job(harness, upstream, die_after_chunks=3)  # role, t0, t1: two tokens
    events = answer.events
    assert answer.names == ["message", "message", "message", "receipt", "error"]
    assert json.loads(events[-1][1])["error"]["code"] == "upstream_died"
    assert "[DONE]" not in answer.text
    assert _token_ids(events[:3]) == [1000, 1001]
    receipt = _verified(events[3][1])
    check_receipt_matches_ticket(receipt, answer.ticket)
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
    answer = _stream_job(harness, upstream, die_after_chunks=1)  # only the role chunk
    assert answer.names == ["message", "error"]
    assert list(harness.service.outbox.all()) == []
    assert len(harness.service.tracker) == 0


def test_engine_dies_mid_json(harness: Harness, upstream: UpstreamProcess) -> None:
    answer = _stream_job(harness, upstream, die_after_chunks=0)
    assert answer.names == ["error"]
    assert json.loads(answer.events[0][1])["error"]["code"] == "upstream_died"
    assert list(harness.service.outbox.all()) == []


def _event(payload: object) -> str:
    return "data: " + json.dumps(payload) + "\n\n"


def _chunk(ids: list[int], **extra: object) -> str:
    choice = {"index": 0, "delta": {"content": "x"}, "token_ids": ids, "finish_reason": None}
    return _event({"object": "chat.completion.chunk", "choices": [choice], **extra})


def test_engine_error_event_uses_prompt_token_ids(
    harness: Harness, upstream: UpstreamProcess
) -> None:
    chunks = [
        _chunk([], prompt_token_ids=[1, 2, 3, 4, 5, 6, 7]),
        _chunk([11, 12]),
        _chunk([13]) + _event({"error": {"message": "CUDA out of memory"}}) + _chunk([14]),
    ]
    answer = _stream_job(harness, upstream, stream_chunks=chunks)
    events = answer.events
    assert answer.names == ["message"] * 3 + ["receipt", "error"]
    assert json.loads(events[-1][1])["error"]["code"] == "upstream_error"
    assert _token_ids(events[:3]) == [11, 12, 13]
    receipt = _verified(events[-2][1])
    assert receipt.interrupted_reason == "engine_error"
    assert receipt.completion_tokens == 3
    assert receipt.output_digest == output_digest([11, 12, 13])
    assert receipt.prompt_tokens == 7
    assert [e.message for e in harness.service.outbox.all()] == [receipt]


def test_stream_ending_without_done_after_usage(
    harness: Harness, upstream: UpstreamProcess
) -> None:
    usage = {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11}
    chunks = [_chunk([21]), _chunk([22]), _event({"choices": [], "usage": usage})]
    answer = _stream_job(harness, upstream, stream_chunks=chunks)
    events = answer.events
    assert answer.names == ["message"] * 3 + ["receipt", "error"]
    assert json.loads(events[-1][1])["error"]["code"] == "upstream_died"
    receipt = _verified(events[-2][1])
    assert receipt.interrupted_reason == "engine_died"
    assert (receipt.prompt_tokens, receipt.completion_tokens) == (9, 2)
    assert receipt.output_digest == output_digest([21, 22])


@pytest.mark.parametrize(
    "event",
    [
        "data: {not json\n\n",
        _event({"choices": ["oops"]}),
        _event({"choices": [None]}),
        _event({"choices": 5}),
    ],
    ids=["not json", "choice a string", "choice null", "choices a number"],
)
def test_an_unreadable_event_gives_upstream_malformed(
    harness: Harness, upstream: UpstreamProcess, event: str
) -> None:
    chunks = [_chunk([31]), event, _chunk([32])]
    answer = _stream_job(harness, upstream, stream_chunks=chunks, delay_ms=20)
    assert answer.names == ["message", "receipt", "error"]
    assert json.loads(answer.events[-1][1])["error"]["code"] == "upstream_malformed"
    receipt = _verified(answer.events[1][1])
    assert receipt.interrupted_reason == "engine_malformed"
    assert receipt.output_digest == output_digest([31])


def test_event_split_across_chunks_is_relayed_whole(
    harness: Harness, upstream: UpstreamProcess
) -> None:
    usage = {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6}
    whole = _chunk([41]) + _chunk([42]) + _event({"choices": [], "usage": usage})
    whole += "data: [DONE]\n\n"
    cuts = [0, 7, 50, len(whole) - 3, len(whole)]  # mid-field, mid-event, mid-[DONE]
    chunks = [whole[a:b] for a, b in itertools.pairwise(cuts)]
    answer = _stream_job(harness, upstream, stream_chunks=chunks, delay_ms=20)
    assert answer.names == ["message"] * 3 + ["receipt", "message"]
    assert answer.text.endswith("data: [DONE]\n\n")
    assert answer.text.startswith(whole[: whole.index("data: [DONE]")])
    receipt = _verified(answer.events[3][1])
    assert receipt.status == "complete"
    assert receipt.output_digest == output_digest([41, 42])


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
        session, url = service.engine.session(), service.engine.urls["/chat/completions"]
        response = await open_upstream(session, url, upstream_payload(job))
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


def test_market_gone_before_the_stream_starts_frees_the_job(
    harness: Harness, upstream: UpstreamProcess
) -> None:
    """If the response start cannot be sent, the event generator never runs: the response
    itself gives back the slot, forgets the energy window and releases the engine's answer."""
    body = chat_body(stream=True)
    headers = harness.header(harness.ticket(body))
    service = harness.service
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/jobs/chat/completions",
        "raw_path": b"/jobs/chat/completions",
        "query_string": b"",
        "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 2),
    }

    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop(0)
        await asyncio.Event().wait()  # the connection stays up until the send fails
        raise AssertionError("unreachable")

    async def send(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            raise OSError("market went away")

    async def go() -> None:
        with contextlib.suppress(OSError):
            await harness.app(scope, receive, send)
        await service.aclose()

    run(go())
    assert len(service.tracker) == 0
    assert service.slots.in_use == 0
    assert list(service.outbox.all()) == []
