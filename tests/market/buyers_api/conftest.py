"""The real app over TestClient, on SQLite and on PostgreSQL, with the embedded chain's domain."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from fastapi.testclient import TestClient
from nacl.signing import SigningKey
from sqlalchemy.orm import Session, sessionmaker

from market.agent_client import AgentClient
from market.app import create_app
from market.chain.service import MarketChain, open_chain
from market.config import Settings
from market.routing.table import RoutingTable
from market.runtime import AGENT_TIMEOUT, Runtime
from protocol.messages import Domain


@pytest.fixture(scope="session")
def chain(tmp_path_factory: pytest.TempPathFactory) -> MarketChain:
    """The embedded chain, deployed once (only its domain matters here)."""
    var = tmp_path_factory.mktemp("chain")
    return open_chain(Settings(database_url=f"sqlite:///{var}/unused.db", var_dir=var))


@dataclass
class BuyerApi:
    """A client of the app, the market's domain and sessions on its database."""

    client: TestClient
    domain: Domain
    sessions: sessionmaker[Session]


@pytest.fixture
def api(
    database_url: str,
    session_factory: sessionmaker[Session],
    chain: MarketChain,
    tmp_path: Path,
) -> Iterator[BuyerApi]:
    """The app on the test's database (each dialect)."""
    settings = Settings(database_url=database_url, var_dir=tmp_path)
    runtime = Runtime(
        settings=settings,
        sessions=session_factory,
        chain=chain,
        ticket_key=SigningKey.generate(),
        routing=RoutingTable(),
        agents=AgentClient(AGENT_TIMEOUT),
    )
    with TestClient(create_app(settings, runtime)) as client:
        yield BuyerApi(client, chain.domain, session_factory)


@pytest.fixture
def buyer() -> LocalAccount:
    """A fresh buyer key."""
    account: LocalAccount = Account.create()
    return account
