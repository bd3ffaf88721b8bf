"""Payment reviews: tables.

A review holds one provider's payment: while it is open, epoch close leaves the provider's
unsettled receipts out of the batch. It keeps why it was opened or extended (each failed
check that holds payment, with its reason and what triggered it: an attestation seq or a
receipt's job id) and how the operator decided it. A receipt's own checks are recorded on
the receipt (`receipts.check_status`) and, for each failed check, in `receipt_check_failures`.
"""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, String, text
from sqlalchemy.orm import Mapped, mapped_column

from market.db import Amount, Base, BigIntPK, UTCDateTime, enum_column, utcnow


class ReviewStatus(enum.StrEnum):
    """Where a review stands: open (payment held), released or voided by the operator."""

    OPEN = "open"
    RELEASED = "released"
    VOIDED = "voided"


class ReceiptCheckStatus(enum.StrEnum):
    """`receipts.check_status`: None until the receipt's claims are checked.

    pass: no check failed; flag: only checks that do not hold payment failed; fail: a check
    of a kind that holds payment failed; void: its charge was reversed by a voided review,
    and no epoch will ever include it.
    """

    PASS = "pass"  # noqa: S105 (a check outcome, not a secret)
    FLAG = "flag"
    FAIL = "fail"
    VOID = "void"


class PaymentReview(Base):
    """One provider's payment held for review (at most one open per provider)."""

    __tablename__ = "payment_reviews"
    __table_args__ = (
        Index(
            "uq_payment_reviews_open_provider",
            "provider_address",
            unique=True,
            sqlite_where=text("status = 'open'"),
            postgresql_where=text("status = 'open'"),
        ),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    provider_address: Mapped[str] = mapped_column(String(42), index=True)
    status: Mapped[ReviewStatus] = mapped_column(
        enum_column(ReviewStatus, "payment_review_status"), default=ReviewStatus.OPEN
    )
    opened_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    """When a failed check last opened or extended it."""
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    decided_by: Mapped[str | None] = mapped_column(String(128))
    note: Mapped[str | None] = mapped_column(String(500))
    reversed_receipts: Mapped[int | None] = mapped_column(Integer())
    """Voided: how many receipts' charges were reversed."""
    reversed_amount: Mapped[int | None] = mapped_column(Amount())
    """Voided: the charges reversed to buyers, payment-token base units."""


class PaymentReviewReason(Base):
    """One failed check that opened or extended a review, and what triggered it."""

    __tablename__ = "payment_review_reasons"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    review_id: Mapped[int] = mapped_column(ForeignKey("payment_reviews.id"), index=True)
    source: Mapped[str] = mapped_column(String(16))
    """"attestation" or "receipt"."""
    attestation_seq: Mapped[int | None] = mapped_column(BigInteger())
    job_id: Mapped[str | None] = mapped_column(String(64))
    check: Mapped[str] = mapped_column(String(32))
    kind: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class ReceiptCheckFailure(Base):
    """A failed check of one receipt's claims, with its reason (passes are not stored)."""

    __tablename__ = "receipt_check_failures"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("receipts.job_id"), index=True)
    check: Mapped[str] = mapped_column(String(32))
    kind: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
