"""What the market's processes share at run time, built once from the settings.

The API keeps one `Runtime` on `app.state`; workers build their own. Endpoints reach it through
the dependencies below, never through globals, so tests can build one against any database
and chain.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import aiohttp
from anyio import CapacityLimiter
from fastapi import Request
from nacl.signing import SigningKey
from sqlalchemy.orm import Session, sessionmaker

from market.agent_client import AgentClient, agent_timeout
from market.chain.service import MarketChain, open_chain
from market.config import Settings
from market.db import create_engine, make_session_factory, session_scope, sqlite_in_memory
from market.keys import ticket_signing_key
from market.routing.table import RoutingTable


def agent_timeouts(settings: Settings) -> aiohttp.ClientTimeout:
    """To provider agents: 5 s to connect and 5 s to wait for a free connection (10 s in all to
    get one), `agent_read_timeout_s` between reads; aiohttp has no write timeout (see
    `agent_timeout`)."""
    return agent_timeout(connect=5.0, read=settings.agent_read_timeout_s, pool=5.0)


AGENT_TIMEOUT = agent_timeouts(Settings.model_construct())
"""`agent_timeouts` at the default settings (no environment read), for runtimes built
without `Runtime.build`."""
AGENT_CONNECTIONS = 1_000


@dataclass
class Runtime:
    """Settings, database, chain, keys, routing table and the HTTP client to agents."""

    settings: Settings
    sessions: sessionmaker[Session]
    chain: MarketChain
    ticket_key: SigningKey
    routing: RoutingTable
    agents: AgentClient
    process_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    """This API process, named in the jobs it opens (`market.jobs.orphans`)."""
    _db_writers: CapacityLimiter | None = field(default=None, init=False, repr=False, compare=False)
    _inline: sessionmaker[Session] | bool | None = field(
        default=None, init=False, repr=False, compare=False
    )

    def inline_sessions(self) -> sessionmaker[Session] | None:
        """Sessions for request-path transactions run on the event loop itself: on a SQLite
        file only, where writers take turns anyway, over one connection that never waits
        for the write lock (busy timeout 0). A transaction that finds the lock taken (by a
        background task, say) fails at its first statement, before it did anything, and the
        caller runs it in a worker thread instead (`market.inference.attempt.run_db`). None
        elsewhere: on PostgreSQL, or an in-memory SQLite (one database per connection)."""
        if self._inline is None:
            self._inline = False
            bind = self.sessions.kw.get("bind")
            url = getattr(bind, "url", None)
            if url is not None and url.get_backend_name() == "sqlite":
                text = url.render_as_string(hide_password=False)
                if not sqlite_in_memory(text):
                    # The loop runs one such transaction at a time, so they all use one
                    # connection, kept open: no pool checkout and return per transaction.
                    engine = create_engine(text, busy_timeout_ms=0)
                    self._inline = make_session_factory(engine.connect())
        return None if isinstance(self._inline, bool) else self._inline

    def db_writers(self) -> CapacityLimiter | None:
        """The limiter for request-path transactions run in worker threads: one at a time
        on SQLite, None (anyio's default pool) elsewhere.

        SQLite takes one writer at a time (`BEGIN IMMEDIATE`), and a connection that finds
        the lock taken sleeps in SQLite's busy handler (1, 2, 5, 10 ... 100 ms) before it
        retries; queueing the transactions here instead hands the lock on at once."""
        if self._db_writers is None:
            bind = self.sessions.kw.get("bind")
            if bind is None or bind.dialect.name != "sqlite":
                return None
            self._db_writers = CapacityLimiter(1)
        return self._db_writers

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
            agents=AgentClient(agent_timeouts(settings), limit=AGENT_CONNECTIONS),
        )

    async def aclose(self) -> None:
        """Releases the connections to agents and the inline transactions' database
        connection (the app's lifespan calls it at shutdown)."""
        await self.agents.aclose()
        if isinstance(self._inline, sessionmaker):
            connection = self._inline.kw["bind"]
            self._inline = None
            connection.close()


def get_runtime(request: Request) -> Runtime:
    """FastAPI dependency: the app's runtime."""
    runtime: Runtime = request.app.state.runtime
    return runtime


def transaction(runtime: Runtime) -> Iterator[Session]:
    """FastAPI dependency: the request's transaction (commits on success, else rolls back)."""
    with session_scope(runtime.sessions) as session:
        yield session
