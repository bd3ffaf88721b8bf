"""The agent served by a real uvicorn: streamed chunks reach the market as they are made."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import uvicorn

from tests.provider_agent.jobs.harness import Harness, chat_body
from tests.support.openai_upstream import UpstreamProcess
from tests.support.ports import free_port


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
