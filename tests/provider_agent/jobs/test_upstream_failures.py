"""Engine failures: 502 before the first byte, `event: error` and no receipt mid-stream."""

from __future__ import annotations

import json

from tests.provider_agent.jobs.harness import Harness, chat_body, sse_events
from tests.support.openai_upstream import UpstreamProcess, free_port


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


def test_engine_dies_mid_stream(harness: Harness, upstream: UpstreamProcess) -> None:
    upstream.control(die_after_chunks=3)
    body = chat_body(stream=True)
    response = harness.post("/jobs/chat/completions", body, harness.header(harness.ticket(body)))
    assert response.status_code == 200
    events = sse_events(response.text)
    names = [name for name, _ in events]
    assert names == ["message", "message", "message", "error"]
    assert json.loads(events[-1][1])["error"]["code"] == "upstream_died"
    assert "receipt" not in names
    assert "[DONE]" not in response.text
    assert harness.service.outbox.all() == []
    assert len(harness.service.tracker) == 0


def test_engine_dies_mid_json(harness: Harness, upstream: UpstreamProcess) -> None:
    upstream.control(die_after_chunks=0)
    body = chat_body(stream=True)
    response = harness.post("/jobs/chat/completions", body, harness.header(harness.ticket(body)))
    events = sse_events(response.text)
    assert [name for name, _ in events] == ["error"]
    assert harness.service.outbox.all() == []
