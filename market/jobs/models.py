"""Jobs and the receipts providers sign for them: tables.

A job is one routed request, from the hold placed at routing to the receipt (or the failure)
at its end. A receipt is stored once verified: every field of the signed message in columns,
the signature and digests as raw bytes (`market.jobs.receipt_codec` packs them and rebuilds the
envelope), its domain and energy site as ids of rows stored once each, and, after its epoch
closes, the epoch and its leaf index in that epoch's Merkle tree. A receipt that fails
verification is kept too, as received, with the reason it was refused.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import (
    BigInteger,
    Boolean,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from market.db import Amount, Base, UTCDateTime, enum_column, utcnow

if TYPE_CHECKING:
    from protocol.messages import Receipt as SignedReceipt
    from protocol.messages import Signed


class JobStatus(enum.StrEnum):
    """Where a job stands."""

    ROUTED = "routed"
    COMPLETED = "completed"
    FAILED = "failed"


_TOKEN_COUNT = BigInteger().with_variant(Integer(), "sqlite")
"""A receipt's token count column type (see `Receipt`)."""


_ROUTED = "status = 'routed'"


def receipt_status(interrupted_reason: str | None) -> str:
    """A receipt's signed status from its stored columns: "complete" exactly when it has no
    `interrupted_reason`, else "interrupted"."""
    return "complete" if interrupted_reason is None else "interrupted"


class Job(Base):
    """One request routed to one provider, at the prices of its offer when routed."""

    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_buyer_created", "buyer_address", "created_at", "id"),
        Index(
            "ix_jobs_routed",
            "process_id",
            sqlite_where=text(_ROUTED),
            postgresql_where=text(_ROUTED),
        ),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    buyer_address: Mapped[str] = mapped_column(String(42))
    provider_address: Mapped[str] = mapped_column(String(42))
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
    ticket_issued_at_ms: Mapped[int | None] = mapped_column(BigInteger())
    """When the market issued the job's ticket (unix ms, market clock); None before 0013."""
    process_id: Mapped[str | None] = mapped_column(String(32))
    """The API process serving the job (`ApiProcess`); None before 0015."""


class ApiProcess(Base):
    """A market API process, alive while its heartbeat is recent: the jobs it opened and
    has not ended are released (`market.jobs.orphans`) once it stops beating."""

    __tablename__ = "api_processes"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class ReceiptDomain(Base):
    """A domain receipts were signed for (chain id and settlement contract), stored once."""

    __tablename__ = "receipt_domains"
    __table_args__ = (UniqueConstraint("chain_id", "settlement_contract"),)

    id: Mapped[int] = mapped_column(Integer(), primary_key=True, autoincrement=True)
    chain_id: Mapped[int] = mapped_column(BigInteger())
    settlement_contract: Mapped[str] = mapped_column(String(42))


class EnergySite(Base):
    """A routed offer's site (region, tariff, PUE, host overhead) as JSON, stored once."""

    __tablename__ = "energy_sites"

    id: Mapped[int] = mapped_column(Integer(), primary_key=True, autoincrement=True)
    digest: Mapped[bytes] = mapped_column(LargeBinary(32), unique=True)
    """SHA-256 of `site` (`market.jobs.receipt_codec.site_digest`)."""
    site: Mapped[str] = mapped_column(Text())


_UNCHECKED = "epoch IS NULL AND check_status IS NULL"


class Receipt(Base):
    """A verified receipt: what the provider signed, what it cost, where it was settled.

    The signed envelope is `signed` (rebuilt by `market.jobs.receipt_codec.unpack`), its
    JSON `envelope`; the routed offer's site JSON is `energy_site` (None: not kept)."""

    __tablename__ = "receipts"
    __table_args__ = (
        Index("ix_receipts_unsettled", "epoch", "buyer_address"),
        # The receipt-check pass reads these in job-id order (migration 0012). The two null
        # columns lead so that SQLite prefers it to ix_receipts_unsettled.
        Index(
            "ix_receipts_unchecked",
            "epoch",
            "check_status",
            "job_id",
            sqlite_where=text(_UNCHECKED),
            postgresql_where=text(_UNCHECKED),
        ),
    )

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), primary_key=True)
    provider_address: Mapped[str] = mapped_column(String(42), index=True)
    buyer_address: Mapped[str] = mapped_column(String(42))
    model: Mapped[str] = mapped_column(String(256))
    receipt_hash: Mapped[str] = mapped_column(String(66), unique=True)
    # 64-bit: SQLite's INTEGER already is (the columns keep that type there), PostgreSQL's
    # BIGINT since migration 0014.
    prompt_tokens: Mapped[int] = mapped_column(_TOKEN_COUNT)
    completion_tokens: Mapped[int] = mapped_column(_TOKEN_COUNT)
    charge: Mapped[int] = mapped_column(Amount())
    fee: Mapped[int] = mapped_column(Amount())
    energy_method: Mapped[str] = mapped_column(String(16))
    energy_mj: Mapped[int | None] = mapped_column(BigInteger())
    first_token_at_ms: Mapped[int | None] = mapped_column(BigInteger())
    finished_at_ms: Mapped[int] = mapped_column(BigInteger())
    verified_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    epoch: Mapped[int | None] = mapped_column(Integer())
    leaf_index: Mapped[int | None] = mapped_column(Integer())
    check_status: Mapped[str | None] = mapped_column(String(8))
    """Its claims' checks (`market.reviews.models.ReceiptCheckStatus`); None: not yet checked."""
    version: Mapped[int] = mapped_column(SmallInteger())
    model_digest: Mapped[bytes] = mapped_column(LargeBinary(32))
    output_digest: Mapped[bytes] = mapped_column(LargeBinary(32))
    ticket_digest: Mapped[bytes] = mapped_column(LargeBinary(32))
    energy_basis: Mapped[str | None] = mapped_column(String(256))
    attestation_seq: Mapped[int | None] = mapped_column(BigInteger())
    interrupted_reason: Mapped[str | None] = mapped_column(String(64))
    """Why the stream broke off; None exactly when the receipt's status is "complete"."""
    signer: Mapped[bytes] = mapped_column(LargeBinary(32))
    signature: Mapped[bytes] = mapped_column(LargeBinary(64))
    domain_id: Mapped[int] = mapped_column(ForeignKey("receipt_domains.id"))
    energy_site_id: Mapped[int | None] = mapped_column(ForeignKey("energy_sites.id"))
    """The routed offer's site, for statements; None for receipts stored before sites were."""
    domain: Mapped[ReceiptDomain] = relationship(lazy="selectin")
    site: Mapped[EnergySite | None] = relationship(lazy="selectin")
    """Both loaded with the receipts (one query per load for the few distinct rows), so
    `signed`, `envelope` and `energy_site` read without a session too."""

    @property
    def status(self) -> str:
        """The signed status: "complete", or "interrupted" (charged for delivered tokens)."""
        return receipt_status(self.interrupted_reason)

    @property
    def signed(self) -> Signed[SignedReceipt]:
        """The envelope the provider signed, rebuilt from the columns."""
        from market.jobs.receipt_codec import unpack
        from protocol.messages import Domain

        domain = Domain(
            chain_id=self.domain.chain_id, settlement_contract=self.domain.settlement_contract
        )
        return unpack(self, domain)

    @property
    def envelope(self) -> str:
        """`signed` as JSON (the form providers send it in)."""
        return self.signed.model_dump_json()

    @property
    def energy_site(self) -> str | None:
        """The routed offer's site as JSON (`market.providers.site.site_json`), or None."""
        return None if self.site is None else self.site.site


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
