"""Jobs and the receipts providers sign for them: tables.

A job is one routed request, from the hold placed at routing to the receipt (or the failure)
at its end. A receipt is stored once verified: its figures, the signed envelope as received,
and, after its epoch closes, the epoch and its leaf index in that epoch's Merkle tree. A
receipt that fails verification is kept too, as received, with the reason it was refused.
"""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import BigInteger, Boolean, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from market.db import Amount, Base, UTCDateTime, enum_column, utcnow


class JobStatus(enum.StrEnum):
    """Where a job stands."""

    ROUTED = "routed"
    COMPLETED = "completed"
    FAILED = "failed"


class Job(Base):
    """One request routed to one provider, at the prices of its offer when routed."""

    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    buyer_address: Mapped[str] = mapped_column(String(42), index=True)
    provider_address: Mapped[str] = mapped_column(String(42), index=True)
    model: Mapped[str] = mapped_column(String(256))
    stream: Mapped[bool] = mapped_column(Boolean())
    status: Mapped[JobStatus] = mapped_column(
        enum_column(JobStatus, "job_status"),
        default=JobStatus.ROUTED,
    )
    hold_amount: Mapped[int] = mapped_column(Amount())
    price_in_per_mtok: Mapped[int] = mapped_column(Amount())
    price_out_per_mtok: Mapped[int] = mapped_column(Amount())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    error: Mapped[str | None] = mapped_column(String(500))
    api_key_id: Mapped[int | None] = mapped_column(ForeignKey("api_keys.id"), index=True)
    """The API key the request came with (its budgets are charged); None before 0009."""


class Receipt(Base):
    """A verified receipt: what the provider signed, what it cost, where it was settled."""

    __tablename__ = "receipts"
    __table_args__ = (Index("ix_receipts_unsettled", "epoch", "buyer_address"),)

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), primary_key=True)
    provider_address: Mapped[str] = mapped_column(String(42), index=True)
    buyer_address: Mapped[str] = mapped_column(String(42))
    model: Mapped[str] = mapped_column(String(256))
    receipt_hash: Mapped[str] = mapped_column(String(66), unique=True)
    prompt_tokens: Mapped[int] = mapped_column(Integer())
    completion_tokens: Mapped[int] = mapped_column(Integer())
    charge: Mapped[int] = mapped_column(Amount())
    fee: Mapped[int] = mapped_column(Amount())
    energy_method: Mapped[str] = mapped_column(String(16))
    energy_mj: Mapped[int | None] = mapped_column(BigInteger())
    first_token_at_ms: Mapped[int | None] = mapped_column(BigInteger())
    finished_at_ms: Mapped[int] = mapped_column(BigInteger())
    envelope: Mapped[str] = mapped_column(Text())
    verified_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    epoch: Mapped[int | None] = mapped_column(Integer())
    leaf_index: Mapped[int | None] = mapped_column(Integer())
    energy_site: Mapped[str | None] = mapped_column(Text())
    """The routed offer's site (region, tariff, PUE, host overhead) as JSON, for statements."""
    check_status: Mapped[str | None] = mapped_column(String(8))
    """Its claims' checks (`market.reviews.models.ReceiptCheckStatus`); None: not yet checked."""


class RejectedReceipt(Base):
    """A receipt that failed verification, kept as received with the reason, for disputes."""

    __tablename__ = "rejected_receipts"

    id: Mapped[int] = mapped_column(Integer(), primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), index=True)
    provider_address: Mapped[str] = mapped_column(String(42), index=True)
    reason: Mapped[str] = mapped_column(String(32))
    message: Mapped[str] = mapped_column(String(500))
    envelope: Mapped[str | None] = mapped_column(Text())
    received_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
