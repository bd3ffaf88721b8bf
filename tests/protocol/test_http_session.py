"""`protocol.http_session.LoopSession`: one aiohttp session per event loop."""

from __future__ import annotations

import asyncio
import threading

import aiohttp
import pytest

from protocol.http_session import LoopSession


def test_one_session_per_loop_made_on_first_use() -> None:
    made: list[aiohttp.ClientSession] = []

    def make() -> aiohttp.ClientSession:
        made.append(aiohttp.ClientSession())
        return made[-1]

    sessions = LoopSession(make)

    async def use() -> aiohttp.ClientSession:
        session = sessions()
        assert sessions() is session
        return session

    first = asyncio.run(use())
    second = asyncio.run(use())  # a new loop: the first session is not reused
    assert second is not first
    assert first.closed  # detached: its loop is gone
    asyncio.run(sessions.aclose())  # from a third loop: nothing to close there
    assert len(made) == 2


def test_aclose_closes_and_the_next_call_makes_a_new_one() -> None:
    sessions = LoopSession(aiohttp.ClientSession)

    async def go() -> None:
        session = sessions()
        await sessions.aclose()
        assert session.closed
        again = sessions()
        assert again is not session
        await sessions.aclose()

    asyncio.run(go())


@pytest.mark.timeout(30)
def test_a_session_of_a_running_loop_is_closed_on_that_loop() -> None:
    sessions = LoopSession(aiohttp.ClientSession)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        other = asyncio.run_coroutine_threadsafe(_call(sessions), loop).result(10)

        async def here() -> None:
            assert sessions() is not other
            await sessions.aclose()

        asyncio.run(here())
        asyncio.run_coroutine_threadsafe(asyncio.sleep(0.05), loop).result(10)
        assert other.closed
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


async def _call(sessions: LoopSession) -> aiohttp.ClientSession:
    return sessions()
