"""Accepting a job: the `X-Job-Ticket` header, the checks on it, and the replay cache.

The header holds the market's `Signed[JobTicket]` envelope as JSON, base64url-encoded
(RFC 4648 section 5, padding optional). Checks, in order, each mapped to a status:
signature (401), domain (403), provider (403), freshness (410 expired, 400 not yet
valid), request digest (400), model (400), max_tokens (400), replay (409). `check` runs
every check but the replay one and has no side effect; `claim` consumes the job id.
`authentic` runs only the first three, for a request about a job already accepted (a
cancel), whose ticket may have expired while the job ran.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import heapq
import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import nacl.exceptions
from nacl.signing import VerifyKey

from protocol.canonical import SIGNING_PREFIX
from protocol.errors import (
    BadSignatureError,
    ExpiredMessageError,
    MalformedMessageError,
    NotYetValidError,
    WrongDomainError,
    WrongSignerError,
)
from protocol.messages import (
    Domain,
    JobTicket,
    Signed,
    check_ticket_fresh,
    parse_signed,
    request_digest,
)
from provider_agent.jobs.config import JobsConfig
from provider_agent.jobs.errors import JobError

TICKET_HEADER = "X-Job-Ticket"
_CANONICAL = json.JSONEncoder(
    ensure_ascii=False, allow_nan=False, sort_keys=True, separators=(",", ":")
)
"""`protocol.canonical`'s encoder: a validated ticket (strict, bounded integers, no floats,
ASCII field names) needs no canonical-subset walk before it is encoded."""


@lru_cache(maxsize=16)
def _verify_key(public_key: str) -> VerifyKey:
    return VerifyKey(bytes.fromhex(public_key[2:]))


def verify_ticket(
    envelope: Signed[JobTicket], expected_signer: str, domain: Domain
) -> tuple[JobTicket, str]:
    """`protocol.messages.verify` of a ticket, with its digest (`message_digest`, the
    receipt's `ticket_digest`) from the same signing bytes rather than encoded twice."""
    if envelope.signer != expected_signer:
        raise WrongSignerError(f"signed by {envelope.signer}, expected {expected_signer}")
    ticket = envelope.message
    try:
        payload = _CANONICAL.encode(ticket.model_dump(mode="json")).encode("utf-8")
    except UnicodeEncodeError as exc:
        raise MalformedMessageError("string is not valid Unicode (lone surrogate)") from exc
    raw = b"".join((SIGNING_PREFIX, ticket.type.encode("ascii"), b"\x00", payload))
    try:
        # `signer` and `signature` passed the envelope's lowercase-hex patterns.
        _verify_key(envelope.signer).verify(raw, bytes.fromhex(envelope.signature[2:]))
    except nacl.exceptions.CryptoError as exc:
        raise BadSignatureError(f"{ticket.type} signature does not verify") from exc
    if ticket.domain != domain:
        raise WrongDomainError(f"{ticket.type} is for {ticket.domain}, expected {domain}")
    return ticket, "0x" + hashlib.sha256(raw).hexdigest()


def encode_ticket_header(envelope: Signed[JobTicket]) -> str:
    """The header value for an envelope: base64url of its JSON, without padding."""
    raw = envelope.model_dump_json().encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode_ticket_header(value: str | None) -> Signed[JobTicket]:
    """Parse the header value; 401 when missing, 400 when it is not a ticket envelope."""
    if not value:
        raise JobError(401, "missing_ticket", f"{TICKET_HEADER} header is required")
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError) as exc:
        raise JobError(400, "malformed_ticket", "ticket header is not base64url") from exc
    try:
        return parse_signed(raw, JobTicket)
    except MalformedMessageError as exc:
        raise JobError(400, "malformed_ticket", str(exc)) from exc


class ReplayCache:
    """Job ids seen, each kept only until its ticket expires (memory bounded by live tickets)."""

    def __init__(self, max_entries: int) -> None:
        """`max_entries` caps the live tickets remembered; beyond it jobs are refused (503)."""
        self._expiry: dict[str, int] = {}
        self._heap: list[tuple[int, str]] = []
        self._max = max_entries

    def __len__(self) -> int:
        return len(self._expiry)

    def _forget_expired(self, now_ms: int) -> None:
        while self._heap and self._heap[0][0] <= now_ms:
            _, job_id = heapq.heappop(self._heap)
            self._expiry.pop(job_id, None)

    def claim(self, job_id: str, expires_at: int, now_ms: int) -> None:
        """Record `job_id`; raise 409 if it was seen and has not yet expired."""
        self._forget_expired(now_ms)
        if job_id in self._expiry:
            raise JobError(409, "replayed_ticket", f"job {job_id} was already accepted")
        if len(self._expiry) >= self._max:
            raise JobError(503, "replay_cache_full", "too many live tickets; retry later")
        self._expiry[job_id] = expires_at
        heapq.heappush(self._heap, (expires_at, job_id))


@dataclass(frozen=True)
class AcceptedJob:
    """A job that passed every check: its ticket, digest and the body to send upstream."""

    ticket: JobTicket
    ticket_digest: str
    upstream_body: dict[str, Any]
    stream: bool


class TicketChecker:
    """Runs every acceptance check on a (ticket header, body) pair."""

    def __init__(self, config: JobsConfig, now_ms: Callable[[], int]) -> None:
        """`now_ms` is the clock (unix ms) used for freshness and the replay cache."""
        self._config = config
        self._now_ms = now_ms
        self._replay = ReplayCache(config.replay_cache_max_entries)

    @property
    def replay_cache(self) -> ReplayCache:
        """The cache of accepted job ids."""
        return self._replay

    def accept(self, header: str | None, body: bytes) -> AcceptedJob:
        """Return the accepted job or raise `JobError`; never has side effects on refusal."""
        job = self.check(header, body)
        self.claim(job)
        return job

    def claim(self, job: AcceptedJob) -> None:
        """Consume the job's id (409 if it was accepted before, 503 if the cache is full)."""
        self._replay.claim(job.ticket.job_id, job.ticket.expires_at, self._now_ms())

    def check(self, header: str | None, body: bytes) -> AcceptedJob:
        """Every check but the replay one; no side effect. Raise `JobError` on refusal."""
        ticket, digest = self._verified(decode_ticket_header(header))
        if request_digest(body) != ticket.request_digest:
            raise JobError(400, "digest_mismatch", "request body does not match the ticket")
        payload = _json_object(body)
        if ticket.model != self._config.served_model:
            raise JobError(400, "model_mismatch", f"this agent serves {self._config.served_model}")
        if payload.get("model") != ticket.model:
            raise JobError(400, "model_mismatch", "body model differs from the ticket's model")
        _check_limits(payload, ticket.max_tokens)
        return AcceptedJob(
            ticket=ticket,
            ticket_digest=digest,
            upstream_body=payload,
            stream=payload.get("stream") is True,
        )

    def authentic(self, header: str | None) -> JobTicket:
        """The ticket of a job this agent may be serving: its signature (401), domain (403)
        and provider (403) are checked, not its freshness nor a body."""
        return self._authentic(decode_ticket_header(header))[0]

    def _verified(self, envelope: Signed[JobTicket]) -> tuple[JobTicket, str]:
        ticket, digest = self._authentic(envelope)
        try:
            check_ticket_fresh(ticket, self._now_ms(), max_skew_ms=self._config.max_clock_skew_ms)
        except ExpiredMessageError as exc:
            raise JobError(410, exc.code, str(exc)) from exc
        except NotYetValidError as exc:
            raise JobError(400, exc.code, str(exc)) from exc
        return ticket, digest

    def _authentic(self, envelope: Signed[JobTicket]) -> tuple[JobTicket, str]:
        config = self._config
        try:
            ticket, digest = verify_ticket(envelope, config.market_public_key, config.domain)
        except BadSignatureError as exc:
            raise JobError(401, exc.code, str(exc)) from exc
        except WrongDomainError as exc:
            raise JobError(403, exc.code, str(exc)) from exc
        if ticket.provider != config.provider_address:
            raise JobError(403, "wrong_provider", f"ticket is for provider {ticket.provider}")
        return ticket, digest


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise JobError(400, "invalid_body", "request body is not JSON") from exc
    if not isinstance(payload, dict):
        raise JobError(400, "invalid_body", "request body must be a JSON object")
    return payload


def _check_limits(payload: dict[str, Any], allowed: int) -> None:
    """Enforce the ticket's token limit (filling it in when absent) and a single choice."""
    for field in ("max_tokens", "max_completion_tokens"):
        value = payload.get(field)
        if value is None:
            continue
        if type(value) is not int or value < 1:
            raise JobError(400, "invalid_body", f"{field} must be a positive integer")
        if value > allowed:
            raise JobError(400, "max_tokens_exceeded", f"{field} {value} > ticket's {allowed}")
    if payload.get("max_tokens") is None and payload.get("max_completion_tokens") is None:
        payload["max_tokens"] = allowed
    if payload.get("n", 1) != 1:
        raise JobError(400, "invalid_body", "only n=1 is served")
    if payload.get("include_reasoning", True) is not True:
        # vLLM with a reasoning parser then sends no token ids: no receipt could be signed
        # for an answer the engine would produce all the same
        raise JobError(400, "invalid_body", "include_reasoning must be true (or absent)")
