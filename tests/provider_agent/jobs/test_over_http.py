"""The agent served by a real uvicorn: streamed chunks reach the market as they are made."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator

import httpx
import pytest
import uvicorn

from market.demo.ports import free_port
from protocol.keys import public_key_hex
from protocol.messages import Receipt, output_digest, parse_signed, verify
from tests.provider_agent.jobs.harness import (
    DOMAIN,
    OTHER_PROVIDER,
    PROVIDER_KEY,
    Harness,
    chat_body,
    sse_events,
)
from tests.support.openai_upstream import UpstreamProcess


@pytest.fixture
def agent_url(harness: Harness) -> Iterator[str]:
    """The harness's app behind uvicorn on a loopback port, in a thread."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(harness.app, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_stream_is_relayed_without_buffering(
    harness: Harness, upstream: UpstreamProcess, agent_url: str
) -> None:
    upstream.control(completion_tokens=5, delay_ms=150)
    harness.now[0] = time.time_ns() // 1_000_000
    body = chat_body(stream=True)
    headers = harness.header(harness.ticket(body))
    arrivals: list[tuple[float, bytes]] = []
    start = time.monotonic()
    with httpx.stream(
        "POST", f"{agent_url}/jobs/chat/completions", content=body, headers=headers
    ) as response:
        assert response.status_code == 200
        for chunk in response.iter_raw():
            arrivals.append((time.monotonic() - start, chunk))
    text = b"".join(chunk for _, chunk in arrivals).decode()
    assert "event: receipt" in text
    assert text.endswith("data: [DONE]\n\n")
    assert harness.service.streams == {}  # gone before the stream's last byte
    # the agent closed the engine's stream, so the engine stopped generating (vLLM aborts)
    assert _settles(lambda: upstream.running() == 0, timeout_s=1.0)
    first_token = next(t for t, chunk in arrivals if b'"t0 "' in chunk)
    total = arrivals[-1][0]
    assert total - first_token > 0.5  # the first token came well before the end


def test_a_stream_holds_its_slot_until_it_ends(
    harness: Harness, upstream: UpstreamProcess, agent_url: str
) -> None:
    harness.service.slots.limit = 1
    upstream.control(completion_tokens=5, delay_ms=100)
    harness.now[0] = time.time_ns() // 1_000_000
    body = chat_body(stream=True)
    first, second = (harness.header(harness.ticket(body)) for _ in range(2))
    url = f"{agent_url}/jobs/chat/completions"
    with httpx.stream("POST", url, content=body, headers=first) as response:
        assert response.status_code == 200
        chunks = response.iter_raw()
        next(chunks)
        busy = httpx.post(url, content=body, headers=second)
        assert (busy.status_code, busy.headers["retry-after"]) == (429, "1")
        assert busy.json()["error"]["code"] == "at_capacity"
        text = b"".join(chunks).decode()
    assert text.endswith("data: [DONE]\n\n")
    deadline = time.monotonic() + 5
    while harness.service.slots.in_use and time.monotonic() < deadline:
        time.sleep(0.01)
    assert harness.service.slots.in_use == 0
    upstream.control()
    again = httpx.post(url, content=body, headers=second)  # the refused ticket is unspent
    assert again.status_code == 200, again.text


def _token_ids(text: str) -> list[int]:
    return [
        token
        for name, data in sse_events(text)
        if name == "message" and data.startswith("{")
        for choice in json.loads(data)["choices"]
        for token in choice.get("token_ids") or ()
    ]


def test_the_market_cancels_a_stream(
    harness: Harness, upstream: UpstreamProcess, agent_url: str
) -> None:
    upstream.control(completion_tokens=64, delay_ms=50)
    harness.now[0] = time.time_ns() // 1_000_000
    body = chat_body(stream=True, max_tokens=64)
    ticket = harness.ticket(body, max_tokens=64)
    header = harness.header(ticket)
    cancel_url = f"{agent_url}/jobs/cancel"
    start = time.monotonic()
    with httpx.stream(
        "POST", f"{agent_url}/jobs/chat/completions", content=body, headers=header
    ) as response:
        assert response.status_code == 200
        chunks = response.iter_raw()
        received = b""
        while received.count(b'"token_ids"') < 3:
            received += next(chunks)
        cancelled = httpx.post(cancel_url, headers=header)
        assert cancelled.status_code == 200, cancelled.text
        assert cancelled.json() == {"job_id": ticket.job_id, "cancelled": True}
        text = (received + b"".join(chunks)).decode()
    assert time.monotonic() - start < 64 * 0.05 / 2  # stopped long before the answer's end
    names = [name for name, _ in sse_events(text)]
    assert names[-2:] == ["receipt", "error"]
    assert "data: [DONE]" not in text
    signed = parse_signed(sse_events(text)[-2][1], Receipt)
    receipt = verify(signed, public_key_hex(PROVIDER_KEY), DOMAIN)
    relayed = _token_ids(text)
    assert 3 <= len(relayed) < 64
    assert (receipt.status, receipt.interrupted_reason) == ("interrupted", "cancelled")
    assert receipt.completion_tokens == len(relayed)
    assert receipt.output_digest == output_digest(relayed)
    assert json.loads(sse_events(text)[-1][1])["error"]["code"] == "cancelled"
    (stored,) = harness.service.outbox.all()
    assert stored.message == receipt
    assert harness.service.streams == {}  # gone before the stream's last byte
    # the agent closed the engine's stream, so the engine stopped generating (vLLM aborts)
    assert _settles(lambda: upstream.running() == 0, timeout_s=1.0)
    again = httpx.post(cancel_url, headers=header)  # the stream is over
    assert (again.status_code, again.json()["error"]["code"]) == (404, "job_not_running")


def test_a_cancel_needs_the_markets_ticket_for_this_provider(
    harness: Harness, agent_url: str
) -> None:
    harness.now[0] = time.time_ns() // 1_000_000
    ticket = harness.ticket(chat_body(stream=True))
    elsewhere = ticket.model_copy(update={"provider": OTHER_PROVIDER})
    url = f"{agent_url}/jobs/cancel"
    refusals = [
        (httpx.post(url), 401, "missing_ticket"),
        (httpx.post(url, headers=harness.header(ticket, PROVIDER_KEY)), 401, "wrong_signer"),
        (httpx.post(url, headers=harness.header(elsewhere)), 403, "wrong_provider"),
        (httpx.post(url, headers=harness.header(ticket)), 404, "job_not_running"),
    ]
    for response, status, code in refusals:
        assert (response.status_code, response.json()["error"]["code"]) == (status, code)


def _settles(check: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not check() and time.monotonic() < deadline:
        time.sleep(0.02)
    return check()


@pytest.mark.parametrize(
    ("stream", "stall_headers"),
    [(True, True), (False, False)],
    ids=["stream-before-its-headers", "not-streamed"],
)
def test_a_market_that_leaves_before_the_engine_answers_closes_the_engines_request(
    harness: Harness, upstream: UpstreamProcess, agent_url: str, stream: bool, stall_headers: bool
) -> None:
    """As when the market's first-token timeout gives up on a hung engine: the engine's
    request is closed at once (vLLM aborts it) instead of computed for nobody, and the job
    leaves no receipt, slot or energy window behind."""
    assert _settles(lambda: upstream.running() == 0)  # no earlier test's stream goes on
    upstream.control(stall_ms=20_000, stall_headers=stall_headers)
    harness.now[0] = time.time_ns() // 1_000_000
    body = chat_body(stream=stream)
    headers = harness.header(harness.ticket(body))
    url = f"{agent_url}/jobs/chat/completions"
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(url, content=body, headers=headers, timeout=httpx.Timeout(5, read=0.5))
    assert _settles(lambda: upstream.running() == 0)  # long before the stall's 20 s
    service = harness.service
    assert _settles(lambda: service.slots.in_use == 0 and len(service.tracker) == 0)
    assert list(service.outbox.all()) == []
