"""A tiny real HTTP server standing in for the market's provider routes.

It checks what the market checks of attestations (signature, chain continuity via
`check_chain`, a resent duplicate is acknowledged) and of heartbeats (signature, rising
`issued_at`), and can be told to fail the next posts, or all of them, with a status, to
refuse registrations, or to forget the provider's registration (`forget`: heartbeats are
then 404 `provider_not_found` until it registers again, as from a market whose database was
reset).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from nacl.exceptions import BadSignatureError as NaclBadSignature

from protocol.canonical import signing_input
from protocol.errors import ProtocolError
from protocol.keys import verify_key_from_hex
from protocol.messages import (
    Attestation,
    Domain,
    check_chain,
    message_digest,
    parse_signed,
    verify,
)

DOMAIN = Domain(chain_id=31337, settlement_contract="0x5FbDB2315678afecb367f032d93F642f64180aa3")


@dataclass
class MarketDouble:
    """State of the fake market; every field may be read or set from a test."""

    url: str = ""
    domain: Domain = DOMAIN
    attestations: list[Attestation] = field(default_factory=list)
    heartbeats: list[dict[str, Any]] = field(default_factory=list)
    registrations: list[dict[str, Any]] = field(default_factory=list)
    refused: list[tuple[str, int, str]] = field(default_factory=list)
    fail_next: int = 0
    fail_all: bool = False
    fail_status: int = 503
    trusted_key: str | None = None
    """When set, attestations signed by another key are refused 401 (a rotated key)."""
    posts: int = 0
    forgotten: bool = False
    refuse_registrations: int | None = None
    """When set, registrations are refused with this status (`invalid_offer`) and not kept."""
    refusal_code: str = "refused"
    """The `error.code` of a refused registration."""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def handle(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """Answer one POST (status, JSON body)."""
        with self.lock:
            self.posts += 1
            if self.fail_all or self.fail_next > 0:
                self.fail_next = max(0, self.fail_next - 1)
                return self.fail_status, {"error": {"code": "down", "message": "told to fail"}}
            if path == "/providers/attestations":
                return self._attestation(body)
            if path == "/providers/heartbeat":
                return self._heartbeat(body)
            if path == "/providers/register":
                if self.refuse_registrations is not None:
                    status, code = self.refuse_registrations, self.refusal_code
                    return self._refuse(path, status, "invalid_offer", code)
                self.registrations.append(body)
                self.forgotten = False
                return 200, {"provider": body["message"]["provider"]}
            return 404, {"error": {"code": "not_found", "message": path}}

    def _refuse(
        self, path: str, status: int, why: str, code: str = "refused"
    ) -> tuple[int, dict[str, Any]]:
        self.refused.append((path, status, why))
        return status, {"error": {"code": code, "message": why}}

    def _attestation(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        path = "/providers/attestations"
        if self.trusted_key is not None and body.get("signer") != self.trusted_key:
            return self._refuse(path, 401, "bad_provider_signature")
        try:
            envelope = parse_signed(json.dumps(body), Attestation)
            message = verify(envelope, envelope.signer, self.domain)
        except ProtocolError as exc:
            return self._refuse(path, 400, f"bad attestation: {exc}")
        digest = message_digest(message)
        if message.seq < len(self.attestations):
            if message_digest(self.attestations[message.seq]) == digest:
                return 200, {"seq": message.seq, "digest": digest, "duplicate": True}
            return self._refuse(path, 409, f"fork at seq {message.seq}")
        previous = self.attestations[-1] if self.attestations else None
        try:
            check_chain(previous, message)
        except ProtocolError as exc:
            return self._refuse(path, 409, str(exc))
        self.attestations.append(message)
        return 200, {"seq": message.seq, "digest": digest, "duplicate": False}

    def forget(self) -> None:
        """Lose the provider's registration, as a market whose database was reset."""
        with self.lock:
            self.forgotten = True

    def _heartbeat(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        path = "/providers/heartbeat"
        message = body["message"]
        if self.forgotten:
            self.refused.append((path, 404, "provider_not_found"))
            why = f"no provider {message['provider']} is registered; register first"
            return 404, {"error": {"code": "provider_not_found", "message": why}}
        try:
            verify_key_from_hex(body["signer"]).verify(
                signing_input("provider_heartbeat", message),
                bytes.fromhex(body["signature"][2:]),
            )
        except (NaclBadSignature, ValueError) as exc:
            return self._refuse(path, 401, f"bad heartbeat signature: {exc}")
        if self.heartbeats and message["issued_at"] <= self.heartbeats[-1]["issued_at"]:
            return self._refuse(path, 409, "heartbeat not newer")
        self.heartbeats.append(message)
        return 200, {"provider": message["provider"]}

    def provider(self) -> dict[str, Any]:
        """`GET /providers/{address}`, reduced to its `latest_attestation`."""
        with self.lock:
            if not self.attestations:
                return {"latest_attestation": None}
            last = self.attestations[-1]
            summary = {
                "seq": last.seq,
                "digest": message_digest(last),
                "window_start_ms": last.window_start,
                "window_end_ms": last.window_end,
            }
            return {"address": last.provider, "latest_attestation": summary}

    def health(self) -> dict[str, Any]:
        """The market's `GET /health` body while its chain node does not answer."""
        chain = {"ok": False, "error": "ConnectionError: the chain node does not answer"}
        return {"ok": False, "checks": {"chain": chain}}

    def deployment(self) -> dict[str, Any]:
        """The market's `GET /market`: its deployment's static facts."""
        return {
            "chain_id": self.domain.chain_id,
            "settlement_contract": self.domain.settlement_contract,
            "payment_token": "0x" + "11" * 20,
            "network_token": "0x" + "22" * 20,
        }


def _handler(market: MarketDouble) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _answer(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path == "/health":
                self._answer(503, market.health())
            elif self.path == "/market":
                self._answer(200, market.deployment())
            elif self.path.startswith("/providers/"):
                self._answer(200, market.provider())
            else:
                self._answer(404, {})

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = json.loads(self.rfile.read(length) or b"{}")
            self._answer(*market.handle(self.path, body))

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet."""

    return Handler


@contextmanager
def running_market() -> Iterator[MarketDouble]:
    """A market double on a free loopback port, for the duration of the block."""
    market = MarketDouble()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(market))
    market.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield market
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
