"""Ledger and contract agree after a random run of requests, failures and epoch closes.

Buyers are funded by real on-chain deposits that the deposit watcher credits; providers are
registered on-chain and served by real agents; a seeded random sequence mixes successful
requests (JSON and streamed), requests whose agent is down, streams that die midway, and
epoch closes. At the end the ledger's invariants hold and the chain's totals equal the
ledger's to the base unit. It runs on the embedded default (SQLite, in-process EVM) and on
the testnet's PostgreSQL and anvil.
"""

from __future__ import annotations

import random
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest
from eth_account.signers.local import LocalAccount
from openai.types.chat import ChatCompletionMessageParam
from sqlalchemy import select

from market.app import create_app
from market.buyers.service import create_api_key, get_buyer
from market.chain.service import MarketChain
from market.config import Settings
from market.db import create_engine, session_scope
from market.demo.ports import free_port
from market.jobs.models import Receipt
from market.ledger import service as ledger
from market.runtime import Runtime
from market.settlement import service as settlement
from market.settlement.tasks import TaskContext, close_epoch, watch_deposits
from protocol.chain.connection import EMBEDDED, connect, fund_from_dev_account, new_account
from protocol.chain.deploy import deploy
from protocol.chain.settlement import SettlementClient
from protocol.chain.transactor import Transactor
from tests.market.inference.servers import (
    MODEL,
    Agent,
    PinnedRoutingTable,
    market_runtime,
    serve,
    start_agent,
)
from tests.market.settlement.conftest import PARAMS
from tests.support.chain import GAS_MONEY
from tests.support.openai_upstream import UpstreamProcess

SEED = 20261122
STEPS = 40
MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Say something."}]


@dataclass
class Economy:
    """A market on a fresh deployment, its funded buyers' keys and registered agents."""

    runtime: Runtime
    routing: PinnedRoutingTable
    url: str
    keys: dict[str, str]
    agents: list[Agent]

    @property
    def ctx(self) -> TaskContext:
        return TaskContext.of(self.runtime)


def _account(client: SettlementClient) -> Transactor:
    account: LocalAccount = new_account()
    fund_from_dev_account(client.w3, account.address, GAS_MONEY)
    return Transactor(client.w3, account)


@pytest.fixture(params=["sqlite+embedded", "postgres+anvil"])
def economy(
    request: pytest.FixtureRequest, upstream: UpstreamProcess, tmp_path: Path
) -> Iterator[Economy]:
    """The embedded default (SQLite, in-process EVM), or the testnet's PostgreSQL and anvil."""
    upstream.control()
    embedded = request.param == "sqlite+embedded"
    database_url = str(request.getfixturevalue("sqlite_url" if embedded else "postgres_url"))
    w3 = connect(EMBEDDED if embedded else str(request.getfixturevalue("anvil_url")))
    operator_account: LocalAccount = new_account()
    fund_from_dev_account(w3, operator_account.address, GAS_MONEY)
    operator = Transactor(w3, operator_account)
    chain = MarketChain(SettlementClient(w3, deploy(operator, PARAMS)), operator)
    settings = Settings(database_url=database_url, var_dir=tmp_path, confirmations=0)
    engine = create_engine(database_url)
    routing = PinnedRoutingTable()
    runtime = market_runtime(settings, engine, chain, routing)
    agents: list[Agent] = []
    for i in range(2):
        provider = _account(chain.client)
        chain.client.register_provider(provider, secrets.token_bytes(32))
        seed = "0x" + f"{i + 0x41:02x}" * 32
        agents.append(
            start_agent(upstream.url, chain.domain, provider.address, seed, tmp_path / f"a{i}")
        )
    keys: dict[str, str] = {}
    for amount in (3_000_000, 5_000_000, 7_000_001):
        buyer = _account(chain.client)
        chain.client.faucet(buyer, buyer.address, amount)
        chain.client.deposit(buyer, amount)
        keys[buyer.address] = ""
    assert watch_deposits(TaskContext.of(runtime)) == len(keys)
    with session_scope(runtime.sessions) as session:
        for address in keys:
            secret = create_api_key(session, get_buyer(session, address)).secret
            keys[address] = secret.get_secret_value()
    served = serve(create_app(settings, runtime))
    try:
        yield Economy(runtime, routing, f"{served.url}/v1", keys, agents)
    finally:
        served.stop()
        for agent in agents:
            agent.served.stop()
        engine.dispose()
        upstream.control()


def _request(economy: Economy, key: str, stream: bool, max_tokens: int) -> None:
    with openai.OpenAI(base_url=economy.url, api_key=key, max_retries=0) as client:
        if stream:
            for _ in client.chat.completions.create(
                model=MODEL, messages=MESSAGES, max_tokens=max_tokens, stream=True
            ):
                pass
        else:
            client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=max_tokens)


def _assert_books_match_chain(economy: Economy) -> None:
    client = economy.runtime.chain.client
    with session_scope(economy.runtime.sessions) as session:
        ledger.check_ledger(session)
        escrow = 0
        for buyer in economy.keys:
            mine = sum(
                ledger.balance(session, account)
                for account in (
                    ledger.buyer_available(buyer),
                    ledger.buyer_held(buyer),
                    settlement.buyer_withdrawing(buyer),
                )
            )
            assert client.escrow(buyer) == mine
            escrow += mine
        earnings = 0
        for agent in economy.agents:
            settled = ledger.balance(session, settlement.provider_settled(agent.address))
            assert client.earnings(agent.address) == settled
            assert ledger.balance(session, ledger.provider_earned(agent.address)) == 0
            earnings += settled
        totals = client.totals()
        assert totals.escrow == escrow
        assert totals.earnings == earnings
        assert totals.accrued_fees == ledger.balance(session, settlement.PROTOCOL_SETTLED_FEES)
        assert ledger.balance(session, ledger.PROTOCOL_FEES) == 0


def test_random_run_keeps_ledger_and_chain_equal(
    economy: Economy, upstream: UpstreamProcess
) -> None:
    rng = random.Random(SEED)
    buyers = sorted(economy.keys)
    outcomes: dict[str, int] = {"ok": 0, "down": 0, "died": 0, "epochs": 0}
    for _ in range(STEPS):
        action = rng.choices(["ok", "down", "died", "close"], weights=[6, 1, 1, 1])[0]
        key = economy.keys[rng.choice(buyers)]
        agent = rng.choice(economy.agents)
        offer = agent.offer(rng.randrange(1, 3_000_000), rng.randrange(1, 5_000_000))
        if action == "close":
            if close_epoch(economy.ctx) is not None:
                outcomes["epochs"] += 1
            continue
        if action == "down":
            offer.job_url = f"http://127.0.0.1:{free_port()}/jobs"
        economy.routing.pin([offer])
        if action == "died":
            upstream.control(die_after_chunks=rng.randrange(1, 4))
        try:
            if action == "ok":
                _request(economy, key, rng.random() < 0.5, rng.randrange(1, 17))
            else:
                with pytest.raises(openai.APIError):
                    _request(economy, key, action == "died", 16)
        finally:
            upstream.control()
        outcomes[action] += 1
        assert offer.in_flight == 0
    close_epoch(economy.ctx)
    assert outcomes["ok"] > 10
    assert min(outcomes["down"], outcomes["died"], outcomes["epochs"]) > 0
    _assert_books_match_chain(economy)
    with session_scope(economy.runtime.sessions) as session:
        receipts = list(session.scalars(select(Receipt)))
    interrupted = [r for r in receipts if '"status":"interrupted"' in r.envelope]
    assert interrupted  # streams that died after a token were charged and settled
    assert all(r.epoch is not None and r.charge > 0 for r in interrupted)
