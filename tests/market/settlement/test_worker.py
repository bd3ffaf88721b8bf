"""The Celery worker as a real subprocess, with a real Redis broker, PostgreSQL and anvil."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from market.config import Settings
from market.db import session_scope
from market.ledger import service as ledger
from market.settlement.models import Epoch, EpochStatus
from market.worker import CLOSE_EPOCH, WATCH_DEPOSITS, create_celery
from tests.market.settlement.conftest import Market, add_receipt
from tests.support.redis import RedisUnavailableError, start_redis

MARKET_CLI = Path(sys.executable).parent / "market"


@pytest.fixture
def redis_url() -> Iterator[str]:
    try:
        server = start_redis()
    except RedisUnavailableError as exc:
        pytest.skip(str(exc))
    try:
        yield server.url
    finally:
        server.stop()


@pytest.mark.parametrize("chain_url", ["anvil"], indirect=True)
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_worker_subprocess_watches_and_settles(
    market: Market,
    redis_url: str,
    database_url: str,
    chain_url: str,
    session_factory: sessionmaker[Session],
    tmp_path: Path,
) -> None:
    deployment = tmp_path / "deployment.json"
    market.client.deployment.save(deployment)
    key = market.chain.operator.account.key.hex()
    env = {
        **os.environ,
        "MARKET_DATABASE_URL": database_url,
        "MARKET_BROKER_URL": redis_url,
        "MARKET_CHAIN_RPC_URL": chain_url,
        "MARKET_DEPLOYMENT_FILE": str(deployment),
        "MARKET_OPERATOR_KEY": key,
        "MARKET_CONFIRMATIONS": "0",
    }
    buyer = market.account()
    market.client.faucet(buyer, buyer.address, 10_000)
    market.client.deposit(buyer, 10_000)
    provider = market.provider()
    log = (tmp_path / "worker.log").open("w")
    worker = subprocess.Popen(
        [str(MARKET_CLI), "worker", "--concurrency", "1"],
        env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path,
    )  # fmt: skip
    try:
        sender = create_celery(Settings(broker_url=redis_url))
        sender.send_task(WATCH_DEPOSITS)
        _wait(worker, tmp_path, lambda: _available(session_factory, buyer.address) == 10_000)
        with session_scope(session_factory) as session:
            add_receipt(session, "job-worker-1", buyer.address, provider, 2_000, 100)
        sender.send_task(CLOSE_EPOCH)
        _wait(worker, tmp_path, lambda: _settled(session_factory))
        assert market.client.earnings(provider) == 1_900
    finally:
        worker.terminate()
        worker.wait(timeout=30)


def _available(sessions: sessionmaker[Session], buyer: str) -> int:
    with session_scope(sessions) as session:
        return ledger.balance(session, ledger.buyer_available(buyer))


def _settled(sessions: sessionmaker[Session]) -> bool:
    with session_scope(sessions) as session:
        epoch = session.get(Epoch, 1)
        return epoch is not None and epoch.status is EpochStatus.SETTLED


def _wait(worker: subprocess.Popen[bytes], tmp_path: Path, done: object) -> None:
    assert callable(done)
    deadline = time.monotonic() + 60
    while not done():
        if worker.poll() is not None or time.monotonic() > deadline:
            pytest.fail("worker: " + (tmp_path / "worker.log").read_text()[-3000:])
        time.sleep(0.2)
