"""A real market app on the test's database and an embedded chain with contracts deployed.

The chain (and the market's operator, which holds the network token's genesis supply) is
built once per session; each test gets a runtime on its own fresh database.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from market.agent_client import AgentClient
from market.app import create_app
from market.config import Settings
from market.db import create_engine, make_session_factory
from market.routing.table import RoutingTable
from market.runtime import AGENT_TIMEOUT, Runtime
from tests.market.providers.factories import ChainProviders


@pytest.fixture(scope="session")
def chain_runtime(tmp_path_factory: pytest.TempPathFactory) -> Runtime:
    """A runtime with a freshly deployed embedded chain (its own database is not used)."""
    var = tmp_path_factory.mktemp("providers-chain")
    settings = Settings(database_url=f"sqlite:///{var / 'unused.sqlite3'}", var_dir=var)
    return Runtime.build(settings)


@pytest.fixture
def runtime(chain_runtime: Runtime, database_url: str, tmp_path: Path) -> Iterator[Runtime]:
    """The session's chain with the test's database, an empty routing table, fresh clients."""
    engine = create_engine(database_url)
    built = dataclasses.replace(
        chain_runtime,
        settings=chain_runtime.settings.model_copy(update={"database_url": database_url}),
        sessions=make_session_factory(engine),
        routing=RoutingTable(),
        agents=AgentClient(AGENT_TIMEOUT),
    )
    try:
        yield built
    finally:
        engine.dispose()


@pytest.fixture
def client(runtime: Runtime) -> TestClient:
    """The real app on `runtime`, without its background loop (tests refresh routing)."""
    app = create_app(runtime=runtime)
    app.state.runtime = runtime
    return TestClient(app)


@pytest.fixture
def providers(runtime: Runtime, tmp_path: Path) -> ChainProviders:
    """Makes providers bound and staked on the test's chain."""
    return ChainProviders(runtime, tmp_path)
