"""A job's money and records: hold and job row at routing, charge and receipt at the end.

Each function takes the caller's session, flushes, and never commits. The request path
calls `open_job` in one transaction and either `complete_job` or `fail_job` in a second, so
every hold ends settled or released. An interrupted receipt (the agent's stream broke off
after some tokens reached the buyer) is charged like a complete one, for exactly the
delivered tokens it covers; its job is completed with `error` naming the interruption.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from market.buyers.budgets import record_spend
from market.db import utcnow
from market.jobs.energy import receipt_chain
from market.jobs.errors import JobNotFoundError, ReceiptRejectedError, RejectReason
from market.jobs.models import Job, JobStatus, Receipt, RejectedReceipt
from market.jobs.repository import JobRepository
from market.jobs.schemas import JobRead, ReceiptRead
from market.ledger import service as ledger
from market.ledger.models import HoldStatus
from protocol.errors import ProtocolError
from protocol.messages import (
    Domain,
    JobTicket,
    check_receipt_matches_ticket,
    message_digest,
    output_digest,
    parse_signed,
    verify,
)
from protocol.messages import Receipt as SignedReceipt

MTOK = 1_000_000
BPS = 10_000
_SIGNED = ("envelope", "status", "interrupted_reason")
"""`ReceiptRead` fields read from the stored envelope rather than a column."""


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
    """Places the hold and records the job (`InsufficientFundsError` if the hold is not covered)."""
    ledger.place_hold(session, order.buyer, order.job_id, order.hold)
    job = Job(
        id=order.job_id,
        buyer_address=order.buyer,
        provider_address=order.provider,
        model=order.model,
        stream=order.stream,
        status=JobStatus.ROUTED,
        hold_amount=order.hold,
        price_in_per_mtok=order.price_in,
        price_out_per_mtok=order.price_out,
        created_at=utcnow(),
        api_key_id=order.api_key_id,
    )
    JobRepository(session).add_job(job)
    session.flush()
    return job


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
) -> SignedReceipt:
    """The receipt's message if the provider signed it for this ticket and it agrees with
    what the market observed (usage, and the output tokens when it saw them); else raises
    `ReceiptRejectedError`.

    A complete receipt needs `usage`. With `interrupted=True` (the agent's stream broke
    off) an interrupted receipt is expected instead: its `completion_tokens` and
    `output_digest` must cover exactly `token_ids`, the tokens relayed to the buyer, and its
    `prompt_tokens` must equal the usage's when usage came, else not exceed
    `max_prompt_tokens`. Any other status than the one expected is refused."""
    try:
        parsed = parse_signed(envelope, SignedReceipt)
    except ProtocolError as exc:
        raise ReceiptRejectedError(f"receipt refused: {exc}", RejectReason.MALFORMED) from exc
    try:
        receipt = verify(parsed, public_key, domain)
    except ProtocolError as exc:
        raise ReceiptRejectedError(f"receipt refused: {exc}", RejectReason.BAD_SIGNATURE) from exc
    try:
        check_receipt_matches_ticket(receipt, ticket)
    except ProtocolError as exc:
        raise ReceiptRejectedError(f"receipt refused: {exc}", RejectReason.TICKET_MISMATCH) from exc
    expected = "interrupted" if interrupted else "complete"
    if receipt.status != expected:
        raise ReceiptRejectedError(
            f"receipt status {receipt.status!r} where {expected!r} was expected",
            RejectReason.UNEXPECTED_STATUS,
        )
    if interrupted:
        _check_delivered(receipt, usage, token_ids, max_prompt_tokens)
        return receipt
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
    return receipt


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


def complete_job(
    session: Session,
    job_id: str,
    receipt: SignedReceipt,
    envelope: str,
    fee_bps: int,
    site: str | None = None,
) -> Settlement:
    """Charges a verified receipt (never above the hold), releases the rest, stores it
    (with `site`, the routed offer's energy site as JSON, for energy statements) and adds
    the charge, wall mWh and mg CO2 to the API key's budget totals. An interrupted receipt
    is charged for the tokens it covers; the job's `error` says why it was interrupted."""
    repo = JobRepository(session)
    job = _job(repo, job_id)
    charge = cost(
        receipt.prompt_tokens,
        receipt.completion_tokens,
        job.price_in_per_mtok,
        job.price_out_per_mtok,
    )
    charge = min(charge, job.hold_amount)
    fee = charge * fee_bps // BPS
    ledger.settle_hold(session, job_id, charge, job.provider_address, fee)
    stored = repo.add_receipt(
        Receipt(
            job_id=job_id,
            provider_address=job.provider_address,
            buyer_address=job.buyer_address,
            model=job.model,
            receipt_hash=message_digest(receipt),
            prompt_tokens=receipt.prompt_tokens,
            completion_tokens=receipt.completion_tokens,
            charge=charge,
            fee=fee,
            energy_method=receipt.energy.method,
            energy_mj=receipt.energy.millijoules,
            first_token_at_ms=receipt.first_token_at,
            finished_at_ms=receipt.finished_at,
            envelope=envelope,
            verified_at=utcnow(),
            energy_site=site,
        )
    )
    if job.api_key_id is not None:
        record_spend(session, job.api_key_id, charge, receipt_chain(stored))
    job.status = JobStatus.COMPLETED
    job.finished_at = utcnow()
    if receipt.status == "interrupted":
        job.error = f"interrupted ({receipt.interrupted_reason})"
    session.flush()
    return Settlement(charge=charge, fee=fee, receipt=receipt)


def fail_job(session: Session, job_id: str, reason: str) -> None:
    """Releases the whole hold and marks the job failed (no verified receipt: no charge).

    A job already completed or failed is left as it is, so cleanup may run twice.
    """
    repo = JobRepository(session)
    job = _job(repo, job_id)
    if job.status is not JobStatus.ROUTED:
        return
    if ledger.get_hold(session, job_id).status is HoldStatus.OPEN:
        ledger.release_hold(session, job_id)
    job.status = JobStatus.FAILED
    job.finished_at = utcnow()
    job.error = reason[:500]
    session.flush()


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
                "envelope": json.loads(stored.envelope),
                "status": _signed_field(stored.envelope, "status") or "complete",
                "interrupted_reason": _signed_field(stored.envelope, "interrupted_reason"),
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


def _signed_field(envelope: str, name: str) -> str | None:
    """A string field of a stored receipt envelope's message (None if absent)."""
    value = json.loads(envelope).get("message", {}).get(name)
    return value if isinstance(value, str) else None


def _job(repo: JobRepository, job_id: str) -> Job:
    job = repo.get_job(job_id)
    if job is None:
        raise JobNotFoundError(f"no job {job_id}")
    return job
