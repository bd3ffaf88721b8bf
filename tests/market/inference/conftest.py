"""A market served by uvicorn, with real provider agents in front of the fake engine."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from openai.types.chat import ChatCompletionChunk
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from market.app import create_app
from market.buyers.service import create_api_key, get_or_create_buyer
from market.chain.service import MarketChain, open_chain
from market.config import Settings
from market.db import create_engine, session_scope
from market.jobs.models import Job, JobStatus, Receipt
from market.ledger import service as ledger
from market.runtime import Runtime
from tests.market.factories import new_address, new_tx_hash
from tests.market.inference.servers import (
    Agent,
    CounterMeter,
    PinnedRoutingTable,
    Served,
    market_runtime,
    serve,
    start_agent,
)
from tests.support.openai_upstream import UpstreamProcess, start_upstream

PROVIDER_A = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
PROVIDER_B = "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC"
PROVIDER_METERED = "0x90F79bf6EB2c4f870365E785982E1f101E93b906"
METERED_STEP_MJ = 250_000
"""What one request served by `PROVIDER_METERED` measures: 250 J."""
DEPOSIT = 10_000_000


@pytest.fixture(scope="session")
def upstream() -> Iterator[UpstreamProcess]:
    """The fake OpenAI engine behind every agent."""
    process = start_upstream()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="session")
def chain(tmp_path_factory: pytest.TempPathFactory) -> MarketChain:
    """The embedded chain, deployed once (only its domain matters here)."""
    var = tmp_path_factory.mktemp("chain")
    return open_chain(Settings(database_url=f"sqlite:///{var}/unused.db", var_dir=var))


@pytest.fixture(scope="session")
def agents(
    upstream: UpstreamProcess, chain: MarketChain, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Agent]]:
    """Two real provider agents, by address."""
    started = {
        PROVIDER_A: start_agent(
            upstream.url, chain.domain, PROVIDER_A, "0x" + "02" * 32, tmp_path_factory.mktemp("a")
        ),
        PROVIDER_B: start_agent(
            upstream.url, chain.domain, PROVIDER_B, "0x" + "03" * 32, tmp_path_factory.mktemp("b")
        ),
        PROVIDER_METERED: start_agent(
            upstream.url,
            chain.domain,
            PROVIDER_METERED,
            "0x" + "04" * 32,
            tmp_path_factory.mktemp("c"),
            CounterMeter(METERED_STEP_MJ),
        ),
    }
    try:
        yield started
    finally:
        for agent in started.values():
            agent.served.stop()


@dataclass
class Market:
    """The served market, its runtime and a funded buyer's key."""

    served: Served
    runtime: Runtime
    routing: PinnedRoutingTable
    buyer: str
    api_key: str

    @property
    def url(self) -> str:
        """The OpenAI base URL."""
        return f"{self.served.url}/v1"

    @property
    def sessions(self) -> sessionmaker[Session]:
        """Sessions on the market's database."""
        return self.runtime.sessions


def fund(sessions: sessionmaker[Session], amount: int) -> tuple[str, str]:
    """A new buyer with `amount` deposited and an API key: (address, key)."""
    with session_scope(sessions) as session:
        address = new_address()
        buyer = get_or_create_buyer(session, address)
        if amount:
            ledger.credit_deposit(session, address, amount, new_tx_hash(), 0)
        key = create_api_key(session, buyer).secret.get_secret_value()
    return address, key


def jobs_of(market: Market) -> list[Job]:
    """The market's jobs, oldest first."""
    with session_scope(market.sessions) as session:
        return list(session.scalars(select(Job).order_by(Job.created_at)))


def pin_a_then_b(market: Market, agents: dict[str, Agent]) -> None:
    """Routing holds provider A, then the dearer provider B as its fallback."""
    market.routing.pin(
        [
            agents[PROVIDER_A].offer(1_000_000, 1_000_000),
            agents[PROVIDER_B].offer(2_000_000, 2_000_000),
        ]
    )


def nothing_charged(market: Market, job_id: str) -> None:
    """The job's hold was released, it has no receipt, and the buyer has all it deposited."""
    with session_scope(market.sessions) as session:
        assert ledger.get_hold(session, job_id).status.value == "released"
        assert session.get(Receipt, job_id) is None
        statement = ledger.statement(session, market.buyer)
        assert (statement.available, statement.held, statement.charged) == (DEPOSIT, 0, 0)
        ledger.check_ledger(session)


def settles(check: Callable[[], object], timeout_s: float = 5.0) -> bool:
    """Whether `check()` comes true within `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not check() and time.monotonic() < deadline:
        time.sleep(0.02)
    return bool(check())


def agent_idle(agent: Agent) -> bool:
    """Whether the agent lets go of every slot and stream within a few seconds."""
    return settles(lambda: agent.jobs.slots.in_use == 0 and agent.jobs.streams == {})


def stored_receipts(agent: Agent, job_id: str) -> list[str | None]:
    """The `interrupted_reason` of each receipt the agent stored for the job."""
    return [
        e.message.interrupted_reason for e in agent.jobs.outbox.all() if e.message.job_id == job_id
    ]


def assert_failed_over(market: Market, chunks: list[ChatCompletionChunk], request_id: str) -> Job:
    """Provider A's stream failed before its first token and B served the whole of it (four
    tokens), with nothing of A's attempt in it, and only B's receipt charged: A's job."""
    assert [c.choices[0].delta.content for c in chunks] == ["", "t0 ", "t1 ", "t2 ", "t3 "]
    assert (chunks[0].model_extra or {}) == {}  # no trace of the failed attempt
    failed, served = jobs_of(market)
    assert (failed.provider_address, failed.status) == (PROVIDER_A, JobStatus.FAILED)
    assert (served.provider_address, served.status) == (PROVIDER_B, JobStatus.COMPLETED)
    assert request_id == served.id
    with session_scope(market.sessions) as session:
        assert ledger.get_hold(session, failed.id).status.value == "released"
        assert session.get(Receipt, failed.id) is None
        receipt = session.get(Receipt, served.id)
        assert receipt is not None
        assert receipt.completion_tokens == 4
        statement = ledger.statement(session, market.buyer)
        assert (statement.available, statement.held) == (DEPOSIT - receipt.charge, 0)
        ledger.check_ledger(session)
    assert [offer.in_flight for offer in market.routing.pinned] == [0, 0]
    return failed


def start_market(url: str, chain: MarketChain, tmp_path: Path) -> Iterator[Market]:
    """A market on the database at `url`, served until the generator is closed."""
    settings = Settings(database_url=url, var_dir=tmp_path)
    engine = create_engine(url)
    routing = PinnedRoutingTable()
    runtime = market_runtime(settings, engine, chain, routing)
    served = serve(create_app(settings, runtime))
    buyer, key = fund(runtime.sessions, DEPOSIT)
    try:
        yield Market(served, runtime, routing, buyer, key)
    finally:
        served.stop()
        engine.dispose()


@pytest.fixture
def market(
    sqlite_url: str, chain: MarketChain, upstream: UpstreamProcess, tmp_path: Path
) -> Iterator[Market]:
    """The market on a fresh SQLite database."""
    upstream.control()
    yield from start_market(sqlite_url, chain, tmp_path)


@pytest.fixture
def pg_market(
    postgres_url: str, chain: MarketChain, upstream: UpstreamProcess, tmp_path: Path
) -> Iterator[Market]:
    """The market on a fresh PostgreSQL database."""
    upstream.control()
    yield from start_market(postgres_url, chain, tmp_path)
