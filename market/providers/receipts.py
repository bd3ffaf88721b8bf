"""What the market holds of an agent's receipts: `POST /providers/receipts/status`.

An agent keeps every receipt it signs in its outbox (`provider_agent/jobs/outbox.py`), and a
receipt travels to the market inside the job's response, so the agent cannot tell on its own
whether the market got it. It posts them here, in batches, and learns for each one:

- `recorded`: the market holds this very receipt (same message digest, signer and
  signature); it is charged and goes into an epoch.
- `in_flight`: the job is still open; ask again later.
- `closed`: the job ended without a receipt (the connection broke, the receipt was refused,
  the request was abandoned): nobody was charged and nobody will be for it. `detail` is the
  job's error.
- `differs`: the market holds another receipt for this job; `detail` is its `receipt_hash`.
- `unknown`: the market has no job with this id for the receipt's provider.
- `refused`: the envelope does not parse, or it is not signed by the job's provider's
  current key for this market's domain (a receipt signed before a key rotation ends here).

Every answer but `in_flight` is final. The route only reads: a receipt posted here is never
charged nor stored, so replaying one changes nothing. A receipt the market holds is matched
without verifying its signature again (the bytes are those it verified); any other answer
about a job needs the job's provider's signature, so a stranger learns nothing of it.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import Row, select
from sqlalchemy.orm import Session

from market.jobs.models import Job, JobStatus, Receipt
from market.providers.models import Provider
from protocol.errors import ProtocolError
from protocol.messages import Domain, Signed, message_digest, verify
from protocol.messages import Receipt as SignedReceipt

MAX_BATCH = 500
"""Receipts per request at most."""


class ReceiptState(enum.StrEnum):
    """What the market holds for one posted receipt (see the module's docstring)."""

    RECORDED = "recorded"
    IN_FLIGHT = "in_flight"
    CLOSED = "closed"
    DIFFERS = "differs"
    UNKNOWN = "unknown"
    REFUSED = "refused"


class ReceiptStatusQuery(BaseModel):
    """Signed receipt envelopes as the agent stored them; each is read on its own, so one
    malformed envelope is answered `refused` without failing the others."""

    model_config = ConfigDict(extra="forbid")

    receipts: list[Any] = Field(min_length=1, max_length=MAX_BATCH)


class ReceiptStatusRead(BaseModel):
    """The answer for one posted receipt, in the order posted."""

    job_id: str | None
    state: ReceiptState
    final: bool
    detail: str | None = None


class ReceiptStatusAnswer(BaseModel):
    """`receipts`: one answer per posted receipt, in the order posted."""

    receipts: list[ReceiptStatusRead]


_ENVELOPE = Signed[SignedReceipt]


def _answer(
    job_id: str | None, state: ReceiptState, detail: str | None = None
) -> ReceiptStatusRead:
    return ReceiptStatusRead(
        job_id=job_id, state=state, final=state is not ReceiptState.IN_FLIGHT, detail=detail
    )


def _parse(item: Any) -> Signed[SignedReceipt] | str:
    """The envelope, or why it is not one."""
    try:
        return _ENVELOPE.model_validate(item)
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        where = ".".join(str(part) for part in first["loc"]) or "$"
        return f"malformed receipt envelope: {where}: {first['msg']}"


def _job_id_of(item: Any) -> str | None:
    message = item.get("message") if isinstance(item, dict) else None
    job_id = message.get("job_id") if isinstance(message, dict) else None
    return job_id if isinstance(job_id, str) and len(job_id) <= 64 else None


def _held(stored: Row[str, str, bytes, bytes], envelope: Signed[SignedReceipt]) -> bool:
    """Whether `envelope` is byte for byte the receipt the market verified and stored."""
    _, receipt_hash, signer, signature = stored
    return (
        signature == bytes.fromhex(envelope.signature[2:])
        and signer == bytes.fromhex(envelope.signer[2:])
        and receipt_hash == message_digest(envelope.message)
    )


def receipt_states(session: Session, items: Sequence[Any], domain: Domain) -> ReceiptStatusAnswer:
    """The market's answer for each posted receipt envelope, in order (reads only)."""
    envelopes = [_parse(item) for item in items]
    job_ids = {e.message.job_id for e in envelopes if not isinstance(e, str)}
    job_columns = select(Job.id, Job.provider_address, Job.status, Job.error)
    jobs = {row.id: row for row in session.execute(job_columns.where(Job.id.in_(job_ids)))}
    hashes = select(Receipt.job_id, Receipt.receipt_hash, Receipt.signer, Receipt.signature)
    receipts = session.execute(hashes.where(Receipt.job_id.in_(job_ids)))
    stored = {row.job_id: row for row in receipts}
    providers = {job.provider_address for job in jobs.values()}
    query = select(Provider.address, Provider.public_key).where(Provider.address.in_(providers))
    keys = {address: key for address, key in session.execute(query)}
    answers = []
    for item, envelope in zip(items, envelopes, strict=True):
        if isinstance(envelope, str):
            answers.append(_answer(_job_id_of(item), ReceiptState.REFUSED, envelope))
            continue
        receipt = envelope.message
        job = jobs.get(receipt.job_id)
        if job is None or job.provider_address != receipt.provider:
            answers.append(_answer(receipt.job_id, ReceiptState.UNKNOWN))
            continue
        held = stored.get(job.id)
        if held is not None and _held(held, envelope):
            answers.append(_answer(job.id, ReceiptState.RECORDED))
            continue
        key = keys.get(job.provider_address)
        try:
            if key is None:
                raise ProtocolError(f"provider {job.provider_address} has no registered key")
            verify(envelope, key, domain)
        except ProtocolError as exc:
            answers.append(_answer(job.id, ReceiptState.REFUSED, str(exc)))
            continue
        if held is not None:
            answers.append(_answer(job.id, ReceiptState.DIFFERS, held.receipt_hash))
        elif job.status is JobStatus.ROUTED:
            answers.append(_answer(job.id, ReceiptState.IN_FLIGHT))
        else:
            answers.append(_answer(job.id, ReceiptState.CLOSED, job.error))
    return ReceiptStatusAnswer(receipts=answers)
