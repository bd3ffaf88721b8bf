"""The agent's HTTP client towards the OpenAI-compatible engine (vLLM): one pooled aiohttp
session per event loop (`protocol.http_session.LoopSession`)."""

from __future__ import annotations

import aiohttp
from yarl import URL

from protocol.http_session import KEEPALIVE_S, LoopSession
from provider_agent.jobs.config import JobsConfig

PATHS = ("/chat/completions", "/completions")


class EngineClient:
    """The engine's URLs and the session that reaches them.

    At most `max_connections` connections; `upstream_connect_timeout_s` bounds opening one,
    `upstream_read_timeout_s` each wait for the engine's bytes (and for a free connection
    when all are busy). Requests ask for no compression (`Accept-Encoding: identity`),
    follow no redirect (see `relay.open_upstream`), and keep or send no cookies.
    """

    def __init__(self, config: JobsConfig) -> None:
        """Nothing is opened yet: aiohttp needs a running event loop for that."""
        self._config = config
        base = config.upstream_url.rstrip("/")
        self.urls = {path: URL(base + path) for path in PATHS}
        self.session = LoopSession(self._make)

    def _make(self) -> aiohttp.ClientSession:
        config = self._config
        connector = aiohttp.TCPConnector(
            limit=config.max_connections, limit_per_host=0, keepalive_timeout=KEEPALIVE_S
        )
        timeout = aiohttp.ClientTimeout(
            total=None,
            connect=config.upstream_read_timeout_s,
            sock_connect=config.upstream_connect_timeout_s,
            sock_read=config.upstream_read_timeout_s,
        )
        return aiohttp.ClientSession(
            connector=connector,
            timeout=timeout,
            headers={"Accept-Encoding": "identity"},
            cookie_jar=aiohttp.DummyCookieJar(),
        )

    async def aclose(self) -> None:
        """Close the session's connections (a later request makes a new session)."""
        await self.session.aclose()
