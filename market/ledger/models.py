"""Ledger tables: accounts (with their running balance), transfers, postings, holds.

A transfer is one journal entry; its postings are signed amounts on accounts that sum to
zero. An account's `balance` is the sum of its postings, kept up to date by the service in the
same transaction; it is also the row a writer locks (`SELECT ... FOR UPDATE`) before it checks
a balance, which is what keeps two concurrent holds from overdrawing a buyer.
`repository.derived_balances()` recomputes balances from the postings to prove they agree.
On PostgreSQL, a deferred constraint trigger (see the first migration) also refuses to commit
a transfer whose postings do not sum to zero, and both dialects refuse updates and deletes of
transfers and postings: the journal is append-only.
"""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import CheckConstraint, ForeignKey, Index, Integer, String, text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from market.db import Amount, Base, BigIntPK, UTCDateTime, enum_column, utcnow

_WITH_EPOCH = "epoch IS NOT NULL"
_WITH_LOG = "tx_hash IS NOT NULL"
_OPEN = "status = 'open'"


class OwnerKind(enum.StrEnum):
    """Who an account belongs to."""

    BUYER = "buyer"
    PROVIDER = "provider"
    PROTOCOL = "protocol"
    CHAIN = "chain"


class TransferKind(enum.StrEnum):
    """What a transfer records.

    deposit: on-chain deposit credited to a buyer; hold: available -> held for a job; release:
    held -> available (what a job did not use); charge: held -> provider earnings and protocol
    fee (or available -> what the buyer overdrew, repaid from a deposit); fee: a protocol fee
    not tied to a charge; settle: an epoch settled on-chain; withdrawal: funds leaving the
    contract.
    """

    DEPOSIT = "deposit"
    HOLD = "hold"
    RELEASE = "release"
    CHARGE = "charge"
    FEE = "fee"
    SETTLE = "settle"
    WITHDRAWAL = "withdrawal"


class HoldStatus(enum.StrEnum):
    """Where a job's hold stands."""

    OPEN = "open"
    SETTLED = "settled"
    RELEASED = "released"


class Account(Base):
    """One account, named `<owner_kind>:<owner>:<bucket>` or `<owner_kind>:<bucket>`."""

    __tablename__ = "ledger_accounts"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    owner_kind: Mapped[OwnerKind] = mapped_column(enum_column(OwnerKind, "owner_kind"))
    owner: Mapped[str | None] = mapped_column(String(64), index=True)
    bucket: Mapped[str] = mapped_column(String(32))
    balance: Mapped[int] = mapped_column(Amount(), default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Transfer(Base):
    """One journal entry: an idempotency key, references, and postings that sum to zero."""

    __tablename__ = "ledger_transfers"
    __table_args__ = (
        # Partial (migration 0016): only settlements have an epoch, and only deposits and
        # withdrawals a chain log; a request's transfers take no entry.
        Index(
            "ix_ledger_transfers_epoch",
            "epoch",
            sqlite_where=text(_WITH_EPOCH),
            postgresql_where=text(_WITH_EPOCH),
        ),
        Index(
            "ix_ledger_transfers_tx",
            "tx_hash",
            "log_index",
            sqlite_where=text(_WITH_LOG),
            postgresql_where=text(_WITH_LOG),
        ),
        CheckConstraint("(tx_hash IS NULL) = (log_index IS NULL)", name="tx_hash_with_log_index"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    kind: Mapped[TransferKind] = mapped_column(enum_column(TransferKind, "transfer_kind"))
    idempotency_key: Mapped[str] = mapped_column(String(200), unique=True)
    job_id: Mapped[str | None] = mapped_column(String(64), index=True)
    epoch: Mapped[int | None] = mapped_column(Integer())
    tx_hash: Mapped[str | None] = mapped_column(String(66))
    log_index: Mapped[int | None] = mapped_column(Integer())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    postings: Mapped[list[Posting]] = relationship(
        back_populates="transfer", order_by="Posting.id", lazy="selectin"
    )


class Posting(Base):
    """One leg of a transfer: a signed, non-zero amount on one account."""

    __tablename__ = "ledger_postings"
    __table_args__ = (
        # Balances and statements read an account's postings in order.
        Index("ix_ledger_postings_account_id_id", "account_id", "id"),
        CheckConstraint("CAST(amount AS NUMERIC) <> 0", name="amount_nonzero"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    transfer_id: Mapped[int] = mapped_column(ForeignKey("ledger_transfers.id"), index=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("ledger_accounts.id"))
    amount: Mapped[int] = mapped_column(Amount())

    transfer: Mapped[Transfer] = relationship(back_populates="postings")
    account: Mapped[Account] = relationship(lazy="joined")


class Hold(Base):
    """The funds reserved for one job, from routing until the receipt is charged or dropped."""

    __tablename__ = "ledger_holds"
    __table_args__ = (
        # The open holds by buyer (migration 0016): a hold leaves it when it is closed.
        Index(
            "ix_ledger_holds_open", "buyer", sqlite_where=text(_OPEN), postgresql_where=text(_OPEN)
        ),
        CheckConstraint("CAST(amount AS NUMERIC) > 0", name="amount_positive"),
        CheckConstraint(
            "charged IS NULL OR (CAST(charged AS NUMERIC) >= 0 "
            "AND CAST(charged AS NUMERIC) <= CAST(amount AS NUMERIC))",
            name="charged_within_amount",
        ),
        CheckConstraint(
            "fee IS NULL OR (CAST(fee AS NUMERIC) >= 0 "
            "AND CAST(fee AS NUMERIC) <= CAST(charged AS NUMERIC))",
            name="fee_within_charge",
        ),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    job_id: Mapped[str] = mapped_column(String(64), unique=True)
    buyer: Mapped[str] = mapped_column(String(42))
    amount: Mapped[int] = mapped_column(Amount())
    status: Mapped[HoldStatus] = mapped_column(
        enum_column(HoldStatus, "hold_status"), default=HoldStatus.OPEN
    )
    provider: Mapped[str | None] = mapped_column(String(42))
    charged: Mapped[int | None] = mapped_column(Amount())
    fee: Mapped[int | None] = mapped_column(Amount())
    hold_transfer_id: Mapped[int] = mapped_column(ForeignKey("ledger_transfers.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
