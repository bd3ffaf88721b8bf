"""One pooled aiohttp session per event loop, for the request path's HTTP hops.

The market reaches provider agents, and an agent reaches its engine, over aiohttp: per
request it costs about a quarter of httpx's CPU. An aiohttp session belongs to the event
loop it was made in and can only be made inside a running one, while the objects that hold
it (the market's runtime, the agent's job service) are built before any loop runs, and tests
may use one of them from several loops in turn. `LoopSession` makes the session on first use
in the running loop and a new one when the loop changes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import aiohttp

KEEPALIVE_S = 4.0
"""Idle connections are closed after this, before the far side's uvicorn (5 s keep-alive)
closes them, so a request never goes out on a connection the server is closing."""

TRANSPORT_ERRORS = (aiohttp.ClientError, TimeoutError)
"""What a request or a body read raises when the far side cannot be reached or breaks off
(aiohttp's socket timeouts are `TimeoutError`s)."""


class LoopSession:
    """The running loop's session, made by `make` on first use in that loop.

    `make` is called inside the loop. A session left behind by another loop is closed on
    that loop if it still runs, else only detached (its connections cannot outlive it).
    """

    def __init__(self, make: Callable[[], aiohttp.ClientSession]) -> None:
        self._make = make
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def __call__(self) -> aiohttp.ClientSession:
        """The running loop's session (call it from a coroutine)."""
        loop = asyncio.get_running_loop()
        session = self._session
        if session is None or session.closed or self._loop is not loop:
            self._abandon()
            session = self._make()
            self._session, self._loop = session, loop
        return session

    def _abandon(self) -> None:
        session, loop = self._session, self._loop
        self._session = self._loop = None
        if session is None or session.closed or loop is None:
            return
        if loop.is_running():
            asyncio.run_coroutine_threadsafe(session.close(), loop)
        else:
            session.detach()

    async def aclose(self) -> None:
        """Closes the session and its connections; the next call makes a new one."""
        session, loop = self._session, self._loop
        if session is not None and loop is asyncio.get_running_loop():
            self._session = self._loop = None
            await session.close()
        else:
            self._abandon()
