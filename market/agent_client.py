"""The market's HTTP client to provider agents: one pooled aiohttp session per event loop.

The runtime holds one `AgentClient`; `market.inference.agents` sends jobs through it. The
session is made in the running event loop on first use.
"""

from __future__ import annotations

import aiohttp

from protocol.http_session import KEEPALIVE_S, LoopSession


def agent_timeout(*, connect: float, read: float, pool: float) -> aiohttp.ClientTimeout:
    """No overall limit; `connect` seconds to open a TCP connection, `pool` more to wait for a
    free one (aiohttp's `connect` covers both), `read` seconds between reads from the agent
    (its headers after the body was sent, then each part of its body).

    aiohttp has no write timeout: the body (at most the buyer API's 4 MiB) is handed to the
    socket, and the read timeout starts once it is all written."""
    return aiohttp.ClientTimeout(
        total=None, connect=connect + pool, sock_connect=connect, sock_read=read
    )


class AgentClient:
    """The market's HTTP client to provider agents: one pooled `aiohttp.ClientSession` of at
    most `limit` connections per event loop (`protocol.http_session.LoopSession`)."""

    def __init__(self, timeout: aiohttp.ClientTimeout, *, limit: int = 1_000) -> None:
        self.timeout = timeout
        self.limit = limit
        self.session = LoopSession(self._make)

    def _make(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(limit=self.limit, keepalive_timeout=KEEPALIVE_S)
        return aiohttp.ClientSession(connector=connector, timeout=self.timeout)

    async def aclose(self) -> None:
        """Closes the session (its connections); the next job opens a new one."""
        await self.session.aclose()
