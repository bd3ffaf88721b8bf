"""Fixtures shared across suites: real processes on loopback, started once per session."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from market.demo.ports import free_port
from market.demo.vllm_server import ensure_tiny_model

REPO = Path(__file__).resolve().parents[1]
ANVIL = REPO / "contracts" / "node_modules" / ".bin" / "anvil"


def _anvil_binary() -> str:
    if ANVIL.exists():
        return str(ANVIL)
    found = shutil.which("anvil")
    if found:
        return found
    pytest.fail("anvil not found: run `npm ci --prefix contracts` (scripts/bootstrap.sh does)")


@pytest.fixture(scope="session")
def anvil_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real anvil node on loopback for the whole session (hardfork prague)."""
    port = free_port()
    log = tmp_path_factory.mktemp("anvil") / "anvil.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [
                *(_anvil_binary(), "--port", str(port), "--hardfork", "prague", "--silent"),
                *("--balance", "100000000"),  # ETH per dev account: the suite funds hundreds
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"anvil exited with {proc.returncode}: {log.read_text()[-2000:]}")
            try:
                body = {"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []}
                if httpx.post(url, json=body, timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"anvil did not answer within 30 s: {log.read_text()[-2000:]}")
            time.sleep(0.1)
        os.environ.setdefault("TEST_ANVIL_URL", url)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="session")
def tiny_model(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny test model for a real vLLM, built once: into $TINY_MODEL_DIR if set, else
    pytest's cache (.pytest_cache/d/tiny-llama), else a temporary directory."""
    configured = os.environ.get("TINY_MODEL_DIR")
    if configured:
        return ensure_tiny_model(Path(configured))
    cache = getattr(request.config, "cache", None)  # absent under -p no:cacheprovider
    target = cache.mkdir("tiny-llama") if cache is not None else tmp_path_factory.mktemp("tiny")
    return ensure_tiny_model(target)
