"""Payment reviews: opening and extending them, the operator's decision, and what they hold.

A failed check of a kind in `Settings.review_hold_kinds` (of an attestation at intake, or of
a receipt in the receipt-check pass, `market.reviews.receipts`) opens a review of the
provider, or adds its reasons to the provider's open review. While a review is open, epoch
close leaves every unsettled receipt of the provider out of the batch
(`open_reviews`, used by `market.settlement.service.open_epoch`).

The operator decides once:

- release: the claims are judged acceptable; the withheld receipts join the next epoch.
- void: the claims are judged false. For each of the provider's receipts still in no epoch,
  the charge booked at verification (buyer held -> provider earned + protocol fees) is
  reversed leg for leg (`charge` transfer `void-charge:<job>`: provider earned -(charge -
  fee), protocol fees -fee, buyer held +charge), and the amount goes back to the buyer's
  available balance (`release` transfer `void-release:<job>`: held -charge, available
  +charge), as if the job had cost nothing. The receipts are marked `void` and no epoch ever
  includes them, so the contract never sees them: its escrow of the buyer, which the charge
  never left, again equals the buyer's available + held + withdrawing.

Services flush and never commit; the caller owns the transaction.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import ColumnElement, Select, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from market.addresses import checksum_address
from market.config import Settings
from market.db import utcnow
from market.energy.plausibility import CheckResult
from market.jobs.models import Receipt
from market.ledger.models import TransferKind
from market.ledger.service import (
    PROTOCOL_FEES,
    Leg,
    buyer_available,
    buyer_held,
    post_transfer,
    provider_earned,
)
from market.reviews.errors import ReviewClosedError, ReviewNotFoundError
from market.reviews.models import (
    PaymentReview,
    PaymentReviewReason,
    ReceiptCheckStatus,
    ReviewStatus,
)
from market.reviews.schemas import ReviewDetail, ReviewRead, ReviewReasonRead
from market.settlement.repository import SettlementRepository

DEFAULT_HOLD_KINDS: frozenset[str] = frozenset(
    Settings.model_fields["review_hold_kinds"].get_default(call_default_factory=True)
)
"""The kinds of failed check that hold payment unless configured otherwise."""


@dataclass(frozen=True)
class HoldReason:
    """One failed check that holds payment, and what it was a check of."""

    check: str
    kind: str
    reason: str
    attestation_seq: int | None = None
    job_id: str | None = None

    @property
    def source(self) -> str:
        return "receipt" if self.job_id is not None else "attestation"


def holding_failures(
    results: Iterable[CheckResult], hold_kinds: Collection[str]
) -> list[CheckResult]:
    """The failed checks (ok False, never skipped ones) whose kind holds payment."""
    return [r for r in results if r.ok is False and r.kind in hold_kinds]


# -- opening and extending -----------------------------------------------------------------


def open_reviews() -> Select[str]:
    """The providers whose payment is held: those with an open review (a subquery)."""
    return select(PaymentReview.provider_address).where(PaymentReview.status == ReviewStatus.OPEN)


def _open_review(session: Session, provider: str) -> PaymentReview | None:
    stmt = (
        select(PaymentReview)
        .where(
            PaymentReview.provider_address == provider,
            PaymentReview.status == ReviewStatus.OPEN,
        )
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    return session.scalars(stmt).one_or_none()


def hold_payment(
    session: Session, provider: str, reasons: Sequence[HoldReason]
) -> PaymentReview | None:
    """Opens a review of `provider` (or extends its open one) with `reasons`; None if there
    are none. At most one review per provider is open (a unique partial index): a concurrent
    opener's insert fails on it, and the review it lost to is extended instead."""
    if not reasons:
        return None
    provider = checksum_address(provider)
    now = utcnow()
    review = _open_review(session, provider)
    if review is None:
        try:
            with session.begin_nested():
                review = PaymentReview(
                    provider_address=provider,
                    status=ReviewStatus.OPEN,
                    opened_at=now,
                    updated_at=now,
                )
                session.add(review)
                session.flush()
        except IntegrityError:
            review = _open_review(session, provider)
            if review is None:
                raise
    review.updated_at = now
    session.add_all(
        PaymentReviewReason(
            review_id=review.id,
            source=r.source,
            attestation_seq=r.attestation_seq,
            job_id=r.job_id,
            check=r.check[:32],
            kind=r.kind[:16],
            reason=r.reason[:500],
            created_at=now,
        )
        for r in reasons
    )
    session.flush()
    return review


def hold_for_attestation(
    session: Session,
    provider: str,
    seq: int,
    results: Iterable[CheckResult],
    hold_kinds: Collection[str],
) -> PaymentReview | None:
    """Holds the provider's payment if a check of its attestation `seq` failed with a kind
    in `hold_kinds`; None if none did."""
    reasons = [
        HoldReason(r.check, r.kind, r.reason, attestation_seq=seq)
        for r in holding_failures(results, hold_kinds)
    ]
    return hold_payment(session, provider, reasons)


# -- the operator's decision ---------------------------------------------------------------


def _locked(session: Session, review_id: int) -> PaymentReview:
    stmt = (
        select(PaymentReview)
        .where(PaymentReview.id == review_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    review = session.scalars(stmt).one_or_none()
    if review is None:
        raise ReviewNotFoundError(f"no payment review {review_id}")
    if review.status is not ReviewStatus.OPEN:
        raise ReviewClosedError(f"review {review_id} was already {review.status.value}")
    return review


def _decide(review: PaymentReview, status: ReviewStatus, note: str, decided_by: str) -> None:
    review.status = status
    review.note = note[:500]
    review.decided_by = decided_by[:128]
    review.decided_at = utcnow()


def release_review(session: Session, review_id: int, note: str, decided_by: str) -> ReviewRead:
    """Releases an open review: the provider's withheld receipts join the next epoch."""
    review = _locked(session, review_id)
    _decide(review, ReviewStatus.RELEASED, note, decided_by)
    session.flush()
    return review_read(review)


def void_review(session: Session, review_id: int, note: str, decided_by: str) -> ReviewRead:
    """Voids an open review: reverses the charge of each of the provider's receipts in no
    epoch back to its buyer and marks them void, so that no epoch includes them (module doc).
    Records how many receipts and how much was reversed."""
    from market.settlement.service import EPOCH_CURSOR  # settlement imports this module

    # Epoch close and the receipt-check pass hold the epochs cursor too: taking it first
    # keeps the three from locking receipts and reviews in opposite orders.
    SettlementRepository(session).lock_cursor(EPOCH_CURSOR, 0)
    review = _locked(session, review_id)
    stmt = (
        select(Receipt)
        .where(
            Receipt.provider_address == review.provider_address,
            Receipt.epoch.is_(None),
            _not_void(),
        )
        .order_by(Receipt.job_id)
        .with_for_update()
    )
    count = total = 0
    for receipt in session.scalars(stmt):
        reverse_charge(session, receipt)
        receipt.check_status = ReceiptCheckStatus.VOID.value
        count += 1
        total += receipt.charge
    _decide(review, ReviewStatus.VOIDED, note, decided_by)
    review.reversed_receipts, review.reversed_amount = count, total
    session.flush()
    return review_read(review)


def reverse_charge(session: Session, receipt: Receipt) -> None:
    """Undoes the charge of one receipt (module doc): the exact reverse of the charge's legs,
    then the charge released to the buyer's available balance."""
    charge, fee = receipt.charge, receipt.fee
    if charge == 0:
        return
    held = buyer_held(receipt.buyer_address)
    legs = [Leg(held, charge)]
    if charge - fee > 0:
        legs.append(Leg(provider_earned(receipt.provider_address), -(charge - fee)))
    if fee > 0:
        legs.append(Leg(PROTOCOL_FEES, -fee))
    post_transfer(
        session,
        kind=TransferKind.CHARGE,
        idempotency_key=f"void-charge:{receipt.job_id}",
        legs=legs,
        job_id=receipt.job_id,
    )
    post_transfer(
        session,
        kind=TransferKind.RELEASE,
        idempotency_key=f"void-release:{receipt.job_id}",
        legs=[Leg(held, -charge), Leg(buyer_available(receipt.buyer_address), charge)],
        job_id=receipt.job_id,
    )


def _not_void() -> ColumnElement[bool]:
    return func.coalesce(Receipt.check_status, "") != ReceiptCheckStatus.VOID.value


# -- reading -------------------------------------------------------------------------------


def review_read(review: PaymentReview) -> ReviewRead:
    """The operator's view of a review."""
    return ReviewRead(
        id=review.id,
        provider=review.provider_address,
        status=review.status.value,
        opened_at=review.opened_at,
        updated_at=review.updated_at,
        decided_at=review.decided_at,
        decided_by=review.decided_by,
        note=review.note,
        reversed_receipts=review.reversed_receipts,
        reversed_amount=review.reversed_amount,
    )


def list_reviews(
    session: Session, status: ReviewStatus | None = None, limit: int = 100
) -> list[ReviewRead]:
    """Reviews, newest first, optionally of one status."""
    stmt = select(PaymentReview).order_by(PaymentReview.id.desc()).limit(limit)
    if status is not None:
        stmt = stmt.where(PaymentReview.status == status)
    return [review_read(r) for r in session.scalars(stmt)]


def get_review(session: Session, review_id: int) -> ReviewDetail:
    """One review with its reasons and, while open, the receipts it withholds."""
    review = session.get(PaymentReview, review_id)
    if review is None:
        raise ReviewNotFoundError(f"no payment review {review_id}")
    reasons = session.scalars(
        select(PaymentReviewReason)
        .where(PaymentReviewReason.review_id == review_id)
        .order_by(PaymentReviewReason.id)
    ).all()
    count, amount = 0, 0
    if review.status is ReviewStatus.OPEN:
        count, amount = withheld(session, review.provider_address)
    return ReviewDetail(
        **review_read(review).model_dump(),
        reasons=[ReviewReasonRead.model_validate(r) for r in reasons],
        withheld_receipts=count,
        withheld_amount=amount,
    )


def withheld(session: Session, provider: str) -> tuple[int, int]:
    """(count, sum of charges) of the provider's receipts in no epoch and not void."""
    rows = session.scalars(
        select(Receipt.charge).where(
            Receipt.provider_address == provider, Receipt.epoch.is_(None), _not_void()
        )
    ).all()
    return len(rows), sum(rows)


def held_providers(session: Session, addresses: Sequence[str]) -> set[str]:
    """Which of these providers have their payment held by an open review."""
    if not addresses:
        return set()
    stmt = open_reviews().where(PaymentReview.provider_address.in_(addresses))
    return set(session.scalars(stmt))
