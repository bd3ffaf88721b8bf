"""The agent's engine client: one aiohttp session per event loop, timeouts from the config."""

from __future__ import annotations

import json

import aiohttp
import pytest

from provider_agent.jobs.engine_client import EngineClient
from tests.provider_agent.jobs.harness import Harness, chat_body, run, sse_events
from tests.support.openai_upstream import UpstreamProcess


def test_session_is_made_in_its_loop_and_closed_by_aclose(harness: Harness) -> None:
    engine = EngineClient(harness.config)
    assert str(engine.urls["/chat/completions"]) == harness.upstream_url + "/chat/completions"

    async def go() -> aiohttp.ClientSession:
        session = engine.session()
        assert engine.session() is session  # shared by every job in the loop
        await engine.aclose()
        assert session.closed
        assert engine.session() is not session  # a job after aclose opens a new one
        await engine.aclose()
        return session

    first, second = run(go()), run(go())
    assert first is not second


@pytest.mark.filterwarnings("ignore:Unclosed client session:ResourceWarning")
def test_a_session_from_an_earlier_loop_is_not_reused(
    harness: Harness, upstream: UpstreamProcess
) -> None:
    engine = EngineClient(harness.config)
    health = upstream.url.removesuffix("/v1") + "/health"

    async def status() -> tuple[aiohttp.ClientSession, int]:
        session = engine.session()
        async with session.get(health, headers={"Connection": "close"}) as response:
            return session, response.status

    first, status_1 = run(status())  # not closed: its loop ends with the session open
    second, status_2 = run(status())
    run(engine.aclose())
    assert (status_1, status_2) == (200, 200)
    assert first is not second


def test_read_timeout_mid_stream_is_upstream_died(
    harness: Harness, upstream: UpstreamProcess
) -> None:
    slow = Harness(harness.upstream_url, harness.data_dir, read_timeout_s=0.3)
    upstream.control(delay_ms=1_000)  # the role chunk, then a pause past the timeout
    body = chat_body(stream=True)
    response = slow.post("/jobs/chat/completions", body, slow.header(slow.ticket(body)))
    events = sse_events(response.text)
    assert [name for name, _ in events] == ["message", "error"]
    error = json.loads(events[-1][1])["error"]
    assert error["code"] == "upstream_died"
    assert "Timeout" in error["message"]
    assert list(slow.service.outbox.all()) == []
