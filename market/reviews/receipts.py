"""The receipt-check pass: each verified receipt's timing and energy claims, checked once.

Receipts are verified at intake (signature, ticket, token counts, digest); their timing and
energy figures are checked here, off the request path, by `check_receipt_claim`
(`market/energy/receipt_checks.py`). `check_receipts` takes every receipt in no epoch whose
`check_status` is still null, a chunk at a time in job-id order, with a few set-based
queries per chunk: the receipts with their jobs, the providers' latest attestations and
offers, one UPDATE per status, one INSERT of the failures, and one reputation UPDATE run for
each penalised provider. Epoch close runs it just before it assigns receipts (`open_epoch`),
and the worker runs it on beat's schedule (`market.settlement.tasks.check_receipts`).

What a receipt's checks read besides its own figures:

- the provider's GPU name, GPU count and power limit (the lowest of its GPUs') from its
  latest attestation; without one, the GPU and count of its offer (its registration), and no
  power limit (the datasheet TDP is then used);
- the ticket's issue time, stored with the job (`jobs.ticket_issued_at_ms`): the start of
  `receipt_power`'s interval and the bound `timing_order` holds the first token to. A job
  from before migration 0013 has none; its job's `created_at`, written just before the
  ticket was signed, then stands in where it can only make a check more lenient, i.e. as the
  start of `receipt_power`'s interval (an earlier start widens the ceiling), and the
  ticket-order part of `timing_order` runs without it, so that check reduces to first token
  <= finish.

Outcome per receipt (`receipts.check_status`): `fail` if a check of a kind in
`Settings.review_hold_kinds` failed, `flag` if only other kinds failed, else `pass` (skipped
checks count as neither). Each failure is stored in `receipt_check_failures` (passes are not
stored). A `fail` opens or extends the provider's payment review, and every receipt with a
failure costs the provider reputation as an attestation would
(`market.providers.service.reputation_penalty`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Row, Table, bindparam, insert, select, update
from sqlalchemy.orm import Session

from market.db import utcnow
from market.energy.plausibility import CheckResult
from market.energy.receipt_checks import ReceiptClaim, check_receipt_claim, check_receipt_power
from market.jobs.models import Job, Receipt
from market.providers.models import Attestation, Offer, Provider
from market.providers.repository import ProviderRepository
from market.providers.service import reputation_penalty
from market.reviews.models import ReceiptCheckFailure, ReceiptCheckStatus
from market.reviews.service import HoldReason, hold_payment, holding_failures
from protocol.errors import ProtocolError
from protocol.messages import Attestation as AttestationMessage
from protocol.messages import parse_signed

_PROVIDERS = cast(Table, Provider.__table__)
_LOWER_REPUTATION = (
    update(_PROVIDERS)
    .where(_PROVIDERS.c.address == bindparam("who"))
    .values(reputation=_PROVIDERS.c.reputation - bindparam("penalty"))
)
"""One statement, run once for every penalised provider of a round (executemany)."""

CHUNK = 1_000
"""Receipts checked per round of queries."""

INTERVAL_S = 30.0
"""How often the worker (or the embedded runner) checks new receipts."""


@dataclass(frozen=True)
class Hardware:
    """What a provider's receipts are checked against."""

    gpu_name: str | None
    num_gpus: int
    power_limit_w: float | None


@dataclass(frozen=True)
class CheckRound:
    """What one pass did: receipts checked, and how many failed (held) or were flagged."""

    checked: int = 0
    failed: int = 0
    flagged: int = 0


def _from_attestation(row: Attestation) -> Hardware | None:
    try:
        message = parse_signed(row.envelope, AttestationMessage).message
    except (ProtocolError, ValueError):
        return None
    if not message.gpus:
        return None
    limits = [gpu.power_limit_mw for gpu in message.gpus]
    limit = None if any(v is None for v in limits) else min(v for v in limits if v is not None)
    return Hardware(
        gpu_name=message.gpus[0].name,
        num_gpus=len(message.gpus),
        power_limit_w=None if limit is None else limit / 1000.0,
    )


def _from_offer(offer: Offer) -> Hardware:
    return Hardware(gpu_name=offer.gpu, num_gpus=max(1, offer.gpu_count), power_limit_w=None)


def hardware_of(session: Session, addresses: Sequence[str]) -> dict[str, Hardware]:
    """Each provider's GPUs: from its latest attestation, else from its offer (two queries)."""
    repo = ProviderRepository(session)
    found: dict[str, Hardware] = {}
    for offer in repo.offers_of(addresses):
        found.setdefault(offer.provider_address, _from_offer(offer))
    for address, row in repo.latest_attestations(addresses).items():
        hardware = _from_attestation(row)
        if hardware is not None:
            found[address] = hardware
    return found


def _ms(when: datetime) -> int:
    return int(when.timestamp() * 1000)


def claim_of(
    receipt: Receipt | FigureRow, hardware: Hardware | None, ticket_issued_at_ms: int | None = None
) -> ReceiptClaim:
    """The figures of a receipt (or a row of its `_FIGURES`) as `check_receipt_claim` reads
    them."""
    return ReceiptClaim(
        gpu_name=None if hardware is None else hardware.gpu_name,
        num_gpus=1 if hardware is None else hardware.num_gpus,
        power_limit_w=None if hardware is None else hardware.power_limit_w,
        model=receipt.model,
        prompt_tokens=receipt.prompt_tokens,
        completion_tokens=receipt.completion_tokens,
        energy_method=receipt.energy_method,
        energy_j=None if receipt.energy_mj is None else receipt.energy_mj / 1000.0,
        first_token_at_ms=receipt.first_token_at_ms,
        finished_at_ms=receipt.finished_at_ms,
        ticket_issued_at_ms=ticket_issued_at_ms,
    )


def check_one(claim: ReceiptClaim, job_created_ms: int | None) -> list[CheckResult]:
    """Every check of one receipt; `receipt_power` from the job's creation (module doc)."""
    if job_created_ms is None:
        return check_receipt_claim(claim)
    return _checked(claim, dataclasses.replace(claim, ticket_issued_at_ms=job_created_ms))


def _results(row: FigureRow, hardware: Hardware | None) -> list[CheckResult]:
    """Every check of a row: from its ticket's issue time, else its job's creation (module doc)."""
    if row.ticket_issued_at_ms is not None:
        return check_receipt_claim(claim_of(row, hardware, row.ticket_issued_at_ms))
    return check_one(claim_of(row, hardware), _ms(row.created_at))


def _checked(claim: ReceiptClaim, timed: ReceiptClaim) -> list[CheckResult]:
    """`check_receipt_claim(claim)` with `receipt_power` of `timed` (the job's creation)."""
    return [
        check_receipt_power(timed) if r.check == "receipt_power" else r
        for r in check_receipt_claim(claim)
    ]


def outcome(results: Sequence[CheckResult], hold_kinds: Collection[str]) -> ReceiptCheckStatus:
    """fail (a holding kind failed), flag (another kind failed) or pass."""
    if holding_failures(results, hold_kinds):
        return ReceiptCheckStatus.FAIL
    if any(r.ok is False for r in results):
        return ReceiptCheckStatus.FLAG
    return ReceiptCheckStatus.PASS


_FIGURES = (
    Receipt.job_id,
    Receipt.provider_address,
    Receipt.model,
    Receipt.prompt_tokens,
    Receipt.completion_tokens,
    Receipt.energy_method,
    Receipt.energy_mj,
    Receipt.first_token_at_ms,
    Receipt.finished_at_ms,
    Job.created_at,
    Job.ticket_issued_at_ms,
)
"""The columns the checks read (not the envelope), and the job's creation and ticket issue
time, in this order."""

FigureRow = Row[*tuple[Any, ...]]
"""A row of `_FIGURES` (read by name: `row.model`, `row.created_at`)."""


def _chunk(session: Session, after: str, size: int) -> Sequence[FigureRow]:
    """The next unchecked receipts' `_FIGURES` as plain rows: loading each receipt as an ORM
    object (with its selectin relationships) cost more than checking it."""
    stmt = (
        select(*_FIGURES)
        .join(Job, Job.id == Receipt.job_id)
        .where(Receipt.epoch.is_(None), Receipt.check_status.is_(None), Receipt.job_id > after)
        .order_by(Receipt.job_id)
        .limit(size)
    )
    return session.execute(stmt).all()


def check_receipts(session: Session, hold_kinds: Collection[str], chunk: int = CHUNK) -> CheckRound:
    """Checks every receipt in no epoch not checked yet (module doc), in the caller's
    transaction. A receipt whose status was set meanwhile (voided) is left as it is."""
    checked = failed = flagged = 0
    after = ""
    while True:
        rows = _chunk(session, after, chunk)
        if not rows:
            break
        after = rows[-1].job_id
        hardware = hardware_of(session, sorted({row.provider_address for row in rows}))
        statuses: dict[ReceiptCheckStatus, list[str]] = {}
        failures: list[dict[str, object]] = []
        reasons: dict[str, list[HoldReason]] = {}
        penalties: dict[str, int] = {}
        now = utcnow()
        for row in rows:
            job_id, provider = row.job_id, row.provider_address
            results = _results(row, hardware.get(provider))
            if not any(r.ok is False for r in results):
                # A pass stores, holds and costs nothing (as the general case below).
                statuses.setdefault(ReceiptCheckStatus.PASS, []).append(job_id)
                continue
            status = outcome(results, hold_kinds)
            statuses.setdefault(status, []).append(job_id)
            for r in results:
                if r.ok is False:
                    failures.append(
                        {
                            "job_id": job_id,
                            "check": r.check[:32],
                            "kind": r.kind[:16],
                            "reason": r.reason[:500],
                            "created_at": now,
                        }
                    )
            reasons.setdefault(provider, []).extend(
                HoldReason(r.check, r.kind, r.reason, job_id=job_id)
                for r in holding_failures(results, hold_kinds)
            )
            penalty = reputation_penalty(results)
            if penalty:
                penalties[provider] = penalties.get(provider, 0) + penalty
        for status, job_ids in statuses.items():
            session.execute(
                update(Receipt)
                .where(Receipt.job_id.in_(job_ids), Receipt.check_status.is_(None))
                .values(check_status=status.value)
            )
        if failures:
            session.execute(insert(ReceiptCheckFailure), failures)
        if penalties:
            lowered = [{"who": p, "penalty": n} for p, n in sorted(penalties.items())]
            session.connection().execute(_LOWER_REPUTATION, lowered)
        for provider in sorted(reasons):
            hold_payment(session, provider, reasons[provider])
        session.flush()
        checked += len(rows)
        failed += len(statuses.get(ReceiptCheckStatus.FAIL, []))
        flagged += len(statuses.get(ReceiptCheckStatus.FLAG, []))
        if len(rows) < chunk:
            break
    return CheckRound(checked, failed, flagged)
