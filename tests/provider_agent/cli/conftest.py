"""Fixtures for the CLI tests: a clean agent environment and a local vLLM/market stand-in."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from provider_agent import cli
from tests.support.http_server import serving

METRICS = Path(__file__).resolve().parents[1] / "data" / "vllm-0.32-cpu-metrics.txt"
MODEL = "tiny-llama"


@dataclass
class Services:
    """One HTTP server answering as vLLM and as the market; remembers what was posted."""

    url: str
    posted: list[tuple[str, dict[str, Any]]] = field(default_factory=list)


def _handler(services: Services) -> type[BaseHTTPRequestHandler]:
    routes = {
        "/health": ("text/plain", b""),
        "/v1/models": ("application/json", json.dumps({"data": [{"id": MODEL}]}).encode()),
        "/metrics": ("text/plain; version=0.0.4", METRICS.read_bytes()),
    }

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            content_type, body = routes.get(self.path, ("text/plain", b""))
            self.send_response(200 if self.path in routes else 404)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            services.posted.append((self.path, json.loads(self.rfile.read(length))))
            self.send_response(404)  # the market has no registration route yet
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet."""

    return Handler


@pytest.fixture
def services() -> Iterator[Services]:
    """A real HTTP server on loopback serving /health, /v1/models and vLLM's /metrics."""
    services = Services(url="")
    with serving(_handler(services)) as url:
        services.url = url
        yield services


@pytest.fixture
def runner() -> CliRunner:
    """Typer's in-process runner."""
    return CliRunner()


def init_agent(runner: CliRunner) -> None:
    """Run `init` with the fast KDF and insist it worked."""
    result = runner.invoke(cli.app, ["init", "--kdf-cost", "fast"])
    assert result.exit_code == 0, result.output
