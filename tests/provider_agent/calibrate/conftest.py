"""Fixtures for calibration and pricing: the fake engine, a market double, an agent env."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from protocol.chain.deploy import Deployment
from provider_agent import cli
from tests.support.http_server import serving
from tests.support.openai_upstream import UpstreamProcess, start_upstream

CHAIN_ID = 31337
SETTLEMENT = "0x5FbDB2315678afecb367f032d93F642f64180aa3"


@dataclass
class MarketDouble:
    """Answers `GET /market` and `POST /providers/calibration` with `status`."""

    url: str = ""
    status: int = 404
    posted: list[dict[str, Any]] = field(default_factory=list)


def _handler(market: MarketDouble) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _answer(self, status: int, payload: object) -> None:
            body = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            if self.path == "/market":
                self._answer(200, {"chain_id": CHAIN_ID, "settlement_contract": SETTLEMENT})
            else:
                self._answer(404, {"detail": "not found"})

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = json.loads(self.rfile.read(length))
            if self.path == "/providers/calibration":
                market.posted.append(body)
                self._answer(market.status, {"ok": market.status < 300})
            else:
                self._answer(404, {"detail": "not found"})

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet."""

    return Handler


@pytest.fixture
def market() -> Iterator[MarketDouble]:
    """A market double on loopback."""
    double = MarketDouble()
    with serving(_handler(double)) as url:
        double.url = url
        yield double


@pytest.fixture(scope="module")
def upstream() -> Iterator[UpstreamProcess]:
    """The fake OpenAI-compatible engine with /metrics, as a subprocess."""
    process = start_upstream()
    yield process
    process.stop()


@pytest.fixture
def deployment_file(tmp_path: Path) -> Path:
    """A deployment file naming the signing domain."""
    path = tmp_path / "deployment.json"
    Deployment(
        chain_id=CHAIN_ID,
        payment_token="0x" + "11" * 20,
        network_token="0x" + "22" * 20,
        settlement=SETTLEMENT,
        block=1,
    ).save(path)
    return path


@pytest.fixture
def runner() -> CliRunner:
    """Typer's in-process runner."""
    return CliRunner()


def init_agent(runner: CliRunner) -> None:
    """Run `init` with the fast KDF and insist it worked."""
    result = runner.invoke(cli.app, ["init", "--kdf-cost", "fast"])
    assert result.exit_code == 0, result.output
