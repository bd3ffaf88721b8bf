"""What the market's processes share at run time, built once from the settings.

The API keeps one `Runtime` on `app.state`; workers build their own. Endpoints reach it through
the dependencies below, never through globals, so tests can build one against any database
and chain.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import httpx
from fastapi import Request
from nacl.signing import SigningKey
from sqlalchemy.orm import Session, sessionmaker

from market.chain.service import MarketChain, open_chain
from market.config import Settings
from market.db import create_engine, make_session_factory, session_scope
from market.keys import ticket_signing_key
from market.routing.table import RoutingTable

AGENT_TIMEOUT = httpx.Timeout(connect=5.0, read=300.0, write=30.0, pool=5.0)


@dataclass
class Runtime:
    """Settings, database, chain, keys, routing table and the HTTP client to agents."""

    settings: Settings
    sessions: sessionmaker[Session]
    chain: MarketChain
    ticket_key: SigningKey
    routing: RoutingTable
    agents: httpx.AsyncClient

    @classmethod
    def build(cls, settings: Settings) -> Runtime:
        """Connects everything the settings name (and deploys on the embedded chain)."""
        engine = create_engine(settings.database_url, echo=settings.sql_echo)
        return cls(
            settings=settings,
            sessions=make_session_factory(engine),
            chain=open_chain(settings),
            ticket_key=ticket_signing_key(settings),
            routing=RoutingTable(),
            agents=httpx.AsyncClient(
                timeout=AGENT_TIMEOUT,
                limits=httpx.Limits(max_connections=1_000, max_keepalive_connections=200),
            ),
        )

    async def aclose(self) -> None:
        """Releases connections."""
        await self.agents.aclose()


def get_runtime(request: Request) -> Runtime:
    """FastAPI dependency: the app's runtime."""
    runtime: Runtime = request.app.state.runtime
    return runtime


def transaction(runtime: Runtime) -> Iterator[Session]:
    """FastAPI dependency: the request's transaction (commits on success, else rolls back)."""
    with session_scope(runtime.sessions) as session:
        yield session
