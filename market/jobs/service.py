"""A job's money and records: hold and job row at routing, charge and receipt at the end.

Each function takes the caller's session, flushes, and never commits. The request path
calls `open_job` in one transaction and either `complete_job` or `fail_job` in a second, so
every hold ends settled or released. An interrupted receipt (the agent's stream broke off
after some tokens reached the buyer) is charged like a complete one, for exactly the
delivered tokens it covers; its job is completed with `error` naming the interruption.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import nacl.exceptions
from nacl.signing import VerifyKey
from sqlalchemy.orm import Session

from market.buyers.budgets import record_spend
from market.db import utcnow
from market.energy.accounting import EnergyChain
from market.jobs.energy import buyer_energy, site_chain
from market.jobs.errors import JobNotFoundError, ReceiptRejectedError, RejectReason
from market.jobs.models import Job, JobStatus, RejectedReceipt, receipt_status
from market.jobs.receipt_codec import receipt_columns
from market.jobs.repository import JobRepository
from market.jobs.schemas import JobRead, JobSummary, ReceiptRead
from market.ledger import service as ledger
from market.ledger.models import HoldStatus
from protocol.canonical import SIGNING_PREFIX
from protocol.errors import (
    BadSignatureError,
    MalformedMessageError,
    ProtocolError,
    WrongDomainError,
    WrongSignerError,
)
from protocol.messages import (
    Domain,
    JobTicket,
    Signed,
    check_receipt_matches_ticket,
    message_digest,
    output_digest,
    parse_signed,
)
from protocol.messages import Receipt as SignedReceipt

_CANONICAL = json.JSONEncoder(
    ensure_ascii=False, allow_nan=False, sort_keys=True, separators=(",", ":")
)
"""`protocol.canonical`'s encoder. A message that passed its model's validation (strict
integers within the safe range, no floats, ASCII field names) is already in the canonical
subset, so its signing bytes are this encoding of its dump, without walking it first."""

MTOK = 1_000_000
BPS = 10_000
_SIGNED = ("envelope", "status", "interrupted_reason")
"""`ReceiptRead` fields read from the stored envelope (`Receipt.signed`), not a column."""

log = logging.getLogger(__name__)


def cost(tokens_in: int, tokens_out: int, price_in: int, price_out: int) -> int:
    """Base units for the tokens at per-million prices, rounded up (never a fraction lost)."""
    return -(-(tokens_in * price_in + tokens_out * price_out) // MTOK)


@dataclass(frozen=True)
class JobOrder:
    """What `open_job` needs: who pays, who serves, at which prices, and the worst case."""

    job_id: str
    buyer: str
    provider: str
    model: str
    stream: bool
    price_in: int
    price_out: int
    hold: int
    max_tokens: int
    prompt_bound: int | None = None
    """The market's upper bound on the prompt's tokens (checks interrupted receipts)."""
    api_key_id: int | None = None
    """The API key the request came with: its budgets' totals grow when the job is charged."""
    ticket_issued_at_ms: int | None = None
    """The `issued_at` of the ticket the market signs for the job (the receipt checks' start)."""
    process_id: str | None = None
    """The API process serving the job (`market.jobs.orphans`)."""


@dataclass(frozen=True)
class Usage:
    """Token counts the market saw in the provider's response (its `usage`)."""

    prompt_tokens: int
    completion_tokens: int

    @classmethod
    def of(cls, usage: Any) -> Usage:
        """From an OpenAI `usage` object; `ReceiptRejectedError` if it is not one."""
        try:
            return cls(int(usage["prompt_tokens"]), int(usage["completion_tokens"]))
        except (TypeError, KeyError, ValueError) as exc:
            raise ReceiptRejectedError(
                "the response has no usable `usage`", RejectReason.USAGE_MISSING
            ) from exc


@dataclass(frozen=True)
class Settlement:
    """What a completed job cost and the receipt it was charged on."""

    charge: int
    fee: int
    receipt: SignedReceipt


def open_job(session: Session, order: JobOrder) -> Job:
    """Places the hold and records the job (`InsufficientFundsError` if the hold is not covered).

    The job row is one Core insert; the `Job` returned describes it (not in the session)."""
    ledger.place_hold(session, order.buyer, order.job_id, order.hold)
    values = {
        "id": order.job_id,
        "buyer_address": order.buyer,
        "provider_address": order.provider,
        "model": order.model,
        "stream": order.stream,
        "status": JobStatus.ROUTED,
        "hold_amount": order.hold,
        "price_in_per_mtok": order.price_in,
        "price_out_per_mtok": order.price_out,
        "created_at": utcnow(),
        "api_key_id": order.api_key_id,
        "ticket_issued_at_ms": order.ticket_issued_at_ms,
        "process_id": order.process_id,
    }
    JobRepository(session).insert_job(values)
    return Job(**values)


def check_receipt(
    envelope: str | bytes,
    ticket: JobTicket,
    public_key: str,
    domain: Domain,
    usage: Usage | None,
    token_ids: list[int] | None = None,
    *,
    interrupted: bool = False,
    max_prompt_tokens: int | None = None,
    ticket_digest: str | None = None,
) -> tuple[SignedReceipt, str]:
    """The receipt's message and its digest (`message_digest`: its `receipt_hash`, taken from
    the signing bytes it verified) if the provider signed it for this ticket and it agrees with
    what the market observed (usage, and the output tokens when it saw them); else raises
    `ReceiptRejectedError`.

    A complete receipt needs `usage`. With `interrupted=True` (the agent's stream broke
    off) an interrupted receipt is expected instead: its `completion_tokens` and
    `output_digest` must cover exactly `token_ids`, the tokens relayed to the buyer, and its
    `prompt_tokens` must equal the usage's when usage came, else not exceed
    `max_prompt_tokens`. Any other status than the one expected is refused.

    `ticket_digest`: the ticket's digest if the caller has it (it signed the ticket)."""
    try:
        parsed = parse_signed(envelope, SignedReceipt)
    except ProtocolError as exc:
        raise ReceiptRejectedError(f"receipt refused: {exc}", RejectReason.MALFORMED) from exc
    try:
        receipt, signed_bytes = _verify(parsed, public_key, domain)
    except ProtocolError as exc:
        raise ReceiptRejectedError(f"receipt refused: {exc}", RejectReason.BAD_SIGNATURE) from exc
    try:
        check_receipt_matches_ticket(receipt, ticket, ticket_digest or ticket_digest_of(ticket))
    except ProtocolError as exc:
        raise ReceiptRejectedError(f"receipt refused: {exc}", RejectReason.TICKET_MISMATCH) from exc
    receipt_hash = "0x" + hashlib.sha256(signed_bytes).hexdigest()
    expected = "interrupted" if interrupted else "complete"
    if receipt.status != expected:
        raise ReceiptRejectedError(
            f"receipt status {receipt.status!r} where {expected!r} was expected",
            RejectReason.UNEXPECTED_STATUS,
        )
    if interrupted:
        _check_delivered(receipt, usage, token_ids, max_prompt_tokens)
        return receipt, receipt_hash
    if usage is None:
        raise ReceiptRejectedError("the response has no usable `usage`", RejectReason.USAGE_MISSING)
    signed = (receipt.prompt_tokens, receipt.completion_tokens)
    if signed != (usage.prompt_tokens, usage.completion_tokens):
        raise ReceiptRejectedError(
            f"receipt counts {signed} differ from the response's usage",
            RejectReason.USAGE_MISMATCH,
        )
    if token_ids is not None and output_digest(token_ids) != receipt.output_digest:
        raise ReceiptRejectedError(
            "receipt output_digest differs from the tokens relayed",
            RejectReason.OUTPUT_DIGEST_MISMATCH,
        )
    return receipt, receipt_hash


def signing_bytes_of(message: JobTicket | SignedReceipt) -> bytes:
    """`protocol.messages.signing_bytes` of a validated ticket or receipt (see `_CANONICAL`)."""
    try:
        payload = _CANONICAL.encode(message.model_dump(mode="json")).encode("utf-8")
    except UnicodeEncodeError as exc:
        raise MalformedMessageError("string is not valid Unicode (lone surrogate)") from exc
    return b"".join((SIGNING_PREFIX, message.type.encode("ascii"), b"\x00", payload))


def ticket_digest_of(ticket: JobTicket) -> str:
    """`protocol.messages.message_digest` of a ticket (the receipt's `ticket_digest`)."""
    return "0x" + hashlib.sha256(signing_bytes_of(ticket)).hexdigest()


@lru_cache(maxsize=1024)
def _verify_key(public_key: str) -> VerifyKey:
    return VerifyKey(bytes.fromhex(public_key[2:]))


def _verify(
    envelope: Signed[SignedReceipt], expected_signer: str, domain: Domain
) -> tuple[SignedReceipt, bytes]:
    """`protocol.messages.verify` of a receipt, also returning the bytes it verified."""
    if envelope.signer != expected_signer:
        raise WrongSignerError(f"signed by {envelope.signer}, expected {expected_signer}")
    message = envelope.message
    raw = signing_bytes_of(message)
    try:
        # `signer` and `signature` passed the envelope's lowercase-hex patterns.
        _verify_key(envelope.signer).verify(raw, bytes.fromhex(envelope.signature[2:]))
    except nacl.exceptions.CryptoError as exc:
        raise BadSignatureError(f"{message.type} signature does not verify") from exc
    if message.domain != domain:
        raise WrongDomainError(f"{message.type} is for {message.domain}, expected {domain}")
    return message, raw


def _check_delivered(
    receipt: SignedReceipt,
    usage: Usage | None,
    token_ids: list[int] | None,
    max_prompt_tokens: int | None,
) -> None:
    """An interrupted receipt covers exactly the tokens relayed, and no invented prompt."""
    relayed = token_ids or []
    if receipt.completion_tokens != len(relayed):
        raise ReceiptRejectedError(
            f"interrupted receipt counts {receipt.completion_tokens} tokens, "
            f"{len(relayed)} were relayed to the buyer",
            RejectReason.DELIVERED_MISMATCH,
        )
    if output_digest(relayed) != receipt.output_digest:
        raise ReceiptRejectedError(
            "receipt output_digest differs from the tokens relayed",
            RejectReason.OUTPUT_DIGEST_MISMATCH,
        )
    if usage is not None and receipt.prompt_tokens != usage.prompt_tokens:
        raise ReceiptRejectedError(
            f"receipt prompt_tokens {receipt.prompt_tokens} differ from the usage's "
            f"{usage.prompt_tokens}",
            RejectReason.USAGE_MISMATCH,
        )
    bound = max_prompt_tokens
    if usage is None and bound is not None and receipt.prompt_tokens > bound:
        raise ReceiptRejectedError(
            f"receipt prompt_tokens {receipt.prompt_tokens} exceed the prompt's bound {bound}",
            RejectReason.USAGE_MISMATCH,
        )


@dataclass(frozen=True)
class _Opened:
    """What charging needs of a job's row."""

    buyer_address: str
    provider_address: str
    model: str
    hold_amount: int
    price_in_per_mtok: int
    price_out_per_mtok: int
    api_key_id: int | None


def complete_job(
    session: Session,
    job_id: str,
    receipt: SignedReceipt,
    envelope: str,
    fee_bps: int,
    site: str | None = None,
    chain: EnergyChain | None = None,
    receipt_hash: str | None = None,
    order: JobOrder | None = None,
) -> Settlement:
    """Charges a verified receipt (never above the hold), releases the rest, stores it
    (with `site`, the routed offer's energy site as JSON, for energy statements) and adds
    the charge, wall mWh and mg CO2 to the API key's budget totals. An interrupted receipt
    is charged for the tokens it covers; the job's `error` says why it was interrupted.

    `chain`: the receipt's energy chain at `site`, `receipt_hash` its digest, if the caller
    has them (else derived here); `order`, what the job was opened with (`open_job`), saves
    reading the job's row back. Rows are written with Core statements, in the caller's
    transaction."""
    repo = JobRepository(session)
    if order is not None and order.job_id == job_id:
        job = _Opened(
            order.buyer,
            order.provider,
            order.model,
            order.hold,
            order.price_in,
            order.price_out,
            order.api_key_id,
        )
    else:
        row = repo.read_job(job_id)
        if row is None:
            raise JobNotFoundError(f"no job {job_id}")
        job = _Opened(
            row.buyer_address,
            row.provider_address,
            row.model,
            row.hold_amount,
            row.price_in_per_mtok,
            row.price_out_per_mtok,
            row.api_key_id,
        )
    charge = cost(
        receipt.prompt_tokens,
        receipt.completion_tokens,
        job.price_in_per_mtok,
        job.price_out_per_mtok,
    )
    if charge > job.hold_amount:  # the prompt outgrew its bound: the rest goes unpaid
        log.warning(
            "job %s: its receipt (%d prompt, %d completion tokens) costs %d, more than its "
            "hold %d; charged the hold",
            job_id,
            receipt.prompt_tokens,
            receipt.completion_tokens,
            charge,
            job.hold_amount,
        )
        charge = job.hold_amount
    fee = charge * fee_bps // BPS
    energy = receipt.energy
    if job.api_key_id is not None:
        # the key's row before the ledger's accounts: the order `open_job`'s caller locks
        # them in (key budgets, then the hold), or two requests on one key deadlock on
        # PostgreSQL, each holding the row the other waits for
        if chain is None:
            chain = site_chain(energy.method, energy.millijoules, site)
        record_spend(session, job.api_key_id, charge, chain)
    ledger.settle_hold(session, job_id, charge, job.provider_address, fee)
    now = utcnow()
    repo.insert_receipt(
        {
            "buyer_address": job.buyer_address,
            "receipt_hash": receipt_hash or message_digest(receipt),
            "charge": charge,
            "fee": fee,
            "verified_at": now,
            **receipt_columns(session, receipt, envelope, site),
        }
    )
    error = None
    if receipt.status == "interrupted":
        error = f"interrupted ({receipt.interrupted_reason})"
    repo.finish_job(job_id, JobStatus.COMPLETED, now, error)
    return Settlement(charge=charge, fee=fee, receipt=receipt)


def fail_job(session: Session, job_id: str, reason: str) -> bool:
    """Releases the whole hold and marks the job failed (no verified receipt: no charge);
    whether it did.

    A job already completed or failed is left as it is, so cleanup may run twice.
    """
    repo = JobRepository(session)
    job = _job(repo, job_id)
    if job.status is not JobStatus.ROUTED:
        return False
    if ledger.get_hold(session, job_id).status is HoldStatus.OPEN:
        ledger.release_hold(session, job_id)
    job.status = JobStatus.FAILED
    job.finished_at = utcnow()
    job.error = reason[:500]
    session.flush()
    return True


def reject_receipt(
    session: Session, job_id: str, error: ReceiptRejectedError, envelope: str | None
) -> None:
    """Keeps a refused receipt with its reason, fails the job and releases its hold, all in
    the caller's transaction (no charge: the buyer pays only on a verified receipt)."""
    job = _job(JobRepository(session), job_id)
    session.add(
        RejectedReceipt(
            job_id=job_id,
            provider_address=job.provider_address,
            reason=error.reason.value,
            message=error.message[:500],
            envelope=envelope,
            received_at=utcnow(),
        )
    )
    fail_job(session, job_id, f"receipt rejected ({error.reason.value}): {error.message}")


def rejected_receipts(session: Session, job_id: str) -> list[RejectedReceipt]:
    """Refused receipts of a job, oldest first."""
    return JobRepository(session).rejected_receipts(job_id)


def get_job(session: Session, buyer: str, job_id: str) -> JobRead:
    """The buyer's job with its receipt and charge; `JobNotFoundError` for anyone else's."""
    repo = JobRepository(session)
    job = repo.get_job(job_id)
    if job is None or job.buyer_address != buyer:
        raise JobNotFoundError(f"no job {job_id}")
    stored = repo.get_receipt(job_id)
    receipt = None
    if stored is not None:
        receipt = ReceiptRead.model_validate(
            {
                **{f: getattr(stored, f) for f in ReceiptRead.model_fields if f not in _SIGNED},
                "envelope": stored.signed.model_dump(mode="json"),
                "status": stored.status,
                "interrupted_reason": stored.interrupted_reason,
            }
        )
    return JobRead(
        id=job.id,
        status=job.status,
        model=job.model,
        stream=job.stream,
        provider_address=job.provider_address,
        hold_amount=job.hold_amount,
        price_in_per_mtok=job.price_in_per_mtok,
        price_out_per_mtok=job.price_out_per_mtok,
        charge=stored.charge if stored else 0,
        fee=stored.fee if stored else 0,
        created_at=job.created_at,
        finished_at=job.finished_at,
        error=job.error,
        receipt=receipt,
    )


def buyer_history(
    session: Session, buyer: str, limit: int = 50, before: str | None = None
) -> list[JobSummary]:
    """The buyer's latest `limit` jobs, newest first, with their receipts' tokens, charge
    and energy; `before` (a job id of this buyer's, as the last page ended) pages back.
    `JobNotFoundError` if `before` is not one of the buyer's jobs."""
    repo = JobRepository(session)
    cursor = None
    if before is not None:
        job = repo.get_job(before)
        if job is None or job.buyer_address != buyer:
            raise JobNotFoundError(f"before: no job {before}")
        cursor = (job.created_at, job.id)
    return [_summary(row) for row in repo.buyer_history(buyer, limit, cursor)]


def _summary(row: Any) -> JobSummary:
    received = row.receipt_job_id is not None
    energy = None
    if received:
        chain = site_chain(row.energy_method, row.energy_mj, row.site)
        energy = buyer_energy(chain, row.energy_mj, row.energy_basis)
    return JobSummary(
        id=row.id,
        status=row.status,
        model=row.model,
        stream=row.stream,
        provider_address=row.provider_address,
        created_at=row.created_at,
        finished_at=row.finished_at,
        error=row.error,
        prompt_tokens=row.prompt_tokens,
        completion_tokens=row.completion_tokens,
        charge=row.charge if received else 0,
        receipt_status=None if not received else receipt_status(row.interrupted_reason),
        epoch=row.epoch,
        energy=energy,
    )


def _job(repo: JobRepository, job_id: str) -> Job:
    job = repo.get_job(job_id)
    if job is None:
        raise JobNotFoundError(f"no job {job_id}")
    return job
