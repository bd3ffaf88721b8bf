"""Real servers on loopback for the request-path tests: uvicorn in a background thread."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import uvicorn
from eth_account import Account
from nacl.signing import SigningKey
from sqlalchemy import Engine

from market.agent_client import AgentClient, agent_timeout
from market.chain.service import MarketChain
from market.config import Settings
from market.db import make_session_factory, session_scope
from market.demo.ports import free_port
from market.providers.models import Provider
from market.routing.table import LiveOffer, RoutingTable
from market.runtime import Runtime
from protocol.keys import ProviderIdentity, public_key_hex, signing_key_from_seed
from protocol.messages import Domain
from provider_agent.energy import EnergyMeter, UnmeasuredMeter
from provider_agent.energy.meter import EnergyReading, GpuReading, MeterInfo
from provider_agent.jobs import JobsConfig, create_app
from provider_agent.jobs.app import JobService
from provider_agent.jobs.outbox import ReceiptOutbox
from provider_agent.market_client import MarketClient
from provider_agent.receipt_sync import SyncResult, sync_receipts

MODEL = "tiny-llama"
MODEL_DIGEST = "0x" + "ab" * 32
MARKET_KEY = signing_key_from_seed("0x" + "01" * 32)


@dataclass
class Served:
    """An ASGI app served by uvicorn on a free loopback port in a daemon thread."""

    server: uvicorn.Server
    thread: threading.Thread
    port: int

    @property
    def url(self) -> str:
        """Base URL."""
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        """Asks uvicorn to exit and waits for it."""
        self.server.should_exit = True
        self.thread.join(timeout=10)


def serve(app: Any) -> Served:
    """Starts `app` and waits until it accepts connections."""
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    return Served(server, thread, port)


@dataclass
class Agent:
    """A real provider agent (job endpoint) in front of the fake engine."""

    address: str
    key: SigningKey
    served: Served

    @property
    def jobs(self) -> JobService:
        """The agent's job service (its slots, issuer, outbox)."""
        app: Any = self.served.server.config.app
        service: JobService = app.state.jobs
        return service

    def offer(self, price_in: int, price_out: int, region: str = "DE") -> LiveOffer:
        """Its offer as routing holds it."""
        return LiveOffer(
            provider=self.address,
            model=MODEL,
            region=region,
            price_in_per_mtok=price_in,
            price_out_per_mtok=price_out,
            max_concurrency=8,
            job_url=f"{self.served.url}/jobs",
            public_key=public_key_hex(self.key),
        )


class CounterMeter:
    """A measured meter for tests: each read advances a GPU's energy counter by `step_mj`
    and its clock by one second (so a lone request measures exactly `step_mj`)."""

    kind = "test-counter"
    GPU = GpuReading("GPU-test-0", "NVIDIA H100 80GB HBM3", None, None, 700_000)

    def __init__(self, step_mj: int) -> None:
        self.step_mj = step_mj
        self.reads = 0

    @property
    def method(self) -> Literal["measured"]:
        """Always measured."""
        return "measured"

    def describe(self) -> MeterInfo:
        """One H100."""
        return MeterInfo(kind=self.kind, method="measured")

    def read(self) -> EnergyReading:
        """The counter, one step further."""
        self.reads += 1
        gpu = GpuReading(
            self.GPU.uuid, self.GPU.name, 10**9 + self.reads * self.step_mj, 250_000, 700_000
        )
        return EnergyReading(
            method="measured",
            monotonic_ns=self.reads * 1_000_000_000,
            unix_ms=time.time_ns() // 1_000_000,
            gpus=(gpu,),
        )

    def close(self) -> None:
        """Nothing to release."""


def start_agent(
    upstream_url: str,
    domain: Domain,
    address: str,
    seed: str,
    data: Path,
    meter: EnergyMeter | None = None,
) -> Agent:
    """An agent that trusts `MARKET_KEY` and signs with the key from `seed`."""
    key = signing_key_from_seed(seed)
    config = JobsConfig(
        upstream_url=upstream_url,
        market_public_key=public_key_hex(MARKET_KEY),
        domain=domain,
        provider_address=address,
        served_model=MODEL,
        model_digest=MODEL_DIGEST,
        data_dir=data,
        upstream_connect_timeout_s=2.0,
        upstream_read_timeout_s=10.0,
    )
    app = create_app(config, key, meter or UnmeasuredMeter("NVML absent (test)"))
    return Agent(address, key, serve(app))


class PinnedRoutingTable(RoutingTable):
    """A routing table whose offers, placed by a test, survive the periodic refresh."""

    def __init__(self) -> None:
        self.pinned: list[LiveOffer] = []
        super().__init__()

    def pin(self, offers: Iterable[LiveOffer]) -> None:
        """Puts these offers on the table (until the test ends)."""
        self.pinned = list(offers)
        self.replace([])

    def replace(self, offers: Iterable[LiveOffer]) -> None:
        """Keeps the pinned offers beside whatever the refresh found."""
        super().replace([*offers, *getattr(self, "pinned", [])])


def market_runtime(
    settings: Settings, engine: Engine, chain: MarketChain, routing: RoutingTable
) -> Runtime:
    """A market's runtime for these tests: sessions on `engine`, tickets signed with
    `MARKET_KEY`, and agent timeouts short enough for a failing agent to fail the request
    quickly."""
    return Runtime(
        settings=settings,
        sessions=make_session_factory(engine),
        chain=chain,
        ticket_key=MARKET_KEY,
        routing=routing,
        agents=AgentClient(agent_timeout(connect=2.0, read=10.0, pool=10.0)),
    )


def sync_agent_receipts(
    agent: Agent, market_url: str, runtime: Runtime, job_ids: set[str], data: Path
) -> tuple[SyncResult, ReceiptOutbox]:
    """The agent's receipt sync (`provider_agent.receipt_sync`) against the served market,
    over an outbox holding the agent's receipts for `job_ids` only (the session's tests share
    the agents and their outboxes). The agent is registered with the market's providers
    first, as `provider-agent run` would have it."""
    with session_scope(runtime.sessions) as session:
        if session.get(Provider, agent.address) is None:
            public_key = public_key_hex(agent.key)
            session.add(
                Provider(address=agent.address, public_key=public_key, registration_issued_at_ms=1)
            )
    outbox = ReceiptOutbox(data)
    for envelope in agent.jobs.outbox.all():
        if envelope.message.job_id in job_ids:
            outbox.add(envelope)
    identity = ProviderIdentity(agent.key, Account.create())
    client = MarketClient(market_url, identity, runtime.chain.domain)

    async def sync() -> SyncResult:
        try:
            return await sync_receipts(outbox, client)
        finally:
            await client.aclose()

    return asyncio.run(sync()), outbox
