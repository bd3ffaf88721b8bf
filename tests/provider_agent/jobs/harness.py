"""Keys, config, tickets and a client for driving the job endpoint in-process."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
from nacl.signing import SigningKey
from starlette.applications import Starlette

from protocol.keys import public_key_hex, signing_key_from_seed
from protocol.messages import Domain, JobTicket, new_job_id, request_digest, sign
from provider_agent.energy import EnergyMeter, UnmeasuredMeter
from provider_agent.jobs import JobsConfig, create_app
from provider_agent.jobs.app import JobService
from provider_agent.jobs.outbox import ReceiptOutbox
from provider_agent.jobs.tickets import TICKET_HEADER, encode_ticket_header

T = TypeVar("T")
NOW_MS = 1_767_225_600_000
MODEL = "tiny-llama"
PROVIDER = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
OTHER_PROVIDER = "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC"
DOMAIN = Domain(chain_id=31337, settlement_contract="0x5FbDB2315678afecb367f032d93F642f64180aa3")
MARKET_KEY = signing_key_from_seed("0x" + "01" * 32)
PROVIDER_KEY = signing_key_from_seed("0x" + "02" * 32)
MODEL_DIGEST = "0x" + "ab" * 32


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run one coroutine to completion (tests are synchronous)."""
    return asyncio.run(coro)


@dataclass
class Harness:
    """The app under test, its clock and helpers to mint tickets and send jobs."""

    upstream_url: str
    data_dir: Path
    now: list[int] = field(default_factory=lambda: [NOW_MS])
    meter: EnergyMeter = field(default_factory=lambda: UnmeasuredMeter("NVML absent (test)"))
    read_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        """Build the app against the given engine URL."""
        self.config = JobsConfig(
            upstream_url=self.upstream_url,
            market_public_key=public_key_hex(MARKET_KEY),
            domain=DOMAIN,
            provider_address=PROVIDER,
            served_model=MODEL,
            model_digest=MODEL_DIGEST,
            data_dir=self.data_dir,
            upstream_connect_timeout_s=2.0,
            upstream_read_timeout_s=self.read_timeout_s,
        )
        self.app: Starlette = create_app(
            self.config,
            PROVIDER_KEY,
            self.meter,
            now_ms=lambda: self.now[0],
        )

    @property
    def service(self) -> JobService:
        """The app's state."""
        service: JobService = self.app.state.jobs
        return service

    def ticket(self, body: bytes, **overrides: Any) -> JobTicket:
        """A ticket for `body`, valid for 30 s from now, with fields overridden."""
        fields: dict[str, Any] = {
            "job_id": new_job_id(),
            "provider": PROVIDER,
            "request_digest": request_digest(body),
            "model": MODEL,
            "max_tokens": 64,
            "issued_at": self.now[0],
            "expires_at": self.now[0] + 30_000,
            "domain": DOMAIN,
            **overrides,
        }
        return JobTicket(**fields)

    def header(self, ticket: JobTicket, key: SigningKey = MARKET_KEY) -> dict[str, str]:
        """The `X-Job-Ticket` header for `ticket` signed by `key`."""
        return {TICKET_HEADER: encode_ticket_header(sign(ticket, key))}

    def post(self, path: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
        """POST one job to the app in-process and read the whole answer."""
        return self.send([(path, body, headers)])[0]

    def send(self, requests: list[tuple[str, bytes, dict[str, str]]]) -> list[httpx.Response]:
        """POST jobs one after another in one event loop, then close the engine client
        (made in this loop; the next call's loop makes its own)."""

        async def go() -> list[httpx.Response]:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://agent") as c:
                responses = [
                    await c.post(path, content=body, headers=headers)
                    for path, body, headers in requests
                ]
            await self.service.aclose()
            return responses

        return run(go())


def chat_body(stream: bool = False, max_tokens: int | None = 16, **extra: Any) -> bytes:
    """A buyer's chat request body as the market forwards it."""
    body: dict[str, Any] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Say something."}],
        "temperature": 0.0,
        **extra,
    }
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    if stream:
        body["stream"] = True
    return json.dumps(body).encode()


def sse_events(text: str) -> list[tuple[str, str]]:
    """(event name, data) pairs of an SSE body; unnamed events are "message"."""
    events = []
    for block in text.split("\n\n"):
        if not block.strip():
            continue
        name, data = "message", ""
        for line in block.split("\n"):
            if line.startswith("event: "):
                name = line[len("event: ") :]
            elif line.startswith("data: "):
                data = line[len("data: ") :]
        events.append((name, data))
    return events


def serves_again(harness: Harness) -> list[int]:
    """Sends a streamed job once the outbox can store receipts again: it is served, with its
    receipt, and the outbox reports no error; the completion tokens of every stored receipt."""
    body = chat_body(stream=True, max_tokens=4)
    (recovered,) = harness.send(
        [("/jobs/chat/completions", body, harness.header(harness.ticket(body)))]
    )
    assert recovered.status_code == 200
    assert [name for name, _ in sse_events(recovered.text)][-2:] == ["receipt", "message"]
    assert harness.service.outbox.error is None
    return [r.message.completion_tokens for r in ReceiptOutbox(harness.data_dir).all()]
