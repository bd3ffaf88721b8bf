"""Epochs, their settlement lines, the chain watcher's cursors, and the checks of the ledger
against the chain: tables.

An epoch is opened by assigning every verified receipt not yet in an epoch to it; its Merkle
root, counts and totals are fixed then (status `pending`). It is `submitted` once the operator
is about to send `settleEpoch`, and `settled` once the chain has recorded its root and the
ledger has booked the settlement, in the same database transaction. Each send of
`settleEpoch` is recorded on the epoch (`sent_*`) as soon as the node accepts it, so that a
submitted epoch names the transaction it waits on; `tx_hash` is the one that was mined.
"""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import BigInteger, Boolean, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from market.db import Amount, Base, BigIntPK, UTCDateTime, enum_column, utcnow


class EpochStatus(enum.StrEnum):
    """Where an epoch stands."""

    PENDING = "pending"
    SUBMITTED = "submitted"
    SETTLED = "settled"


class LineKind(enum.StrEnum):
    """A buyer's debit, a provider's credit (payment token) or reward (network token)."""

    DEBIT = "debit"
    CREDIT = "credit"
    REWARD = "reward"


class ChainCursor(Base):
    """How far a sequential reader has got: the next block a watcher scans, or the last
    epoch opened. The row is what concurrent runs lock, so they take turns."""

    __tablename__ = "chain_cursors"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    position: Mapped[int] = mapped_column(BigInteger())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Epoch(Base):
    """One settlement epoch: its receipts' root, totals, the settlement transaction last sent,
    and the one that settled it."""

    __tablename__ = "epochs"

    number: Mapped[int] = mapped_column(Integer(), primary_key=True, autoincrement=False)
    status: Mapped[EpochStatus] = mapped_column(
        enum_column(EpochStatus, "epoch_status"),
        default=EpochStatus.PENDING,
        index=True,
    )
    receipts_root: Mapped[str] = mapped_column(String(66))
    receipt_count: Mapped[int] = mapped_column(Integer())
    total_debit: Mapped[int] = mapped_column(Amount())
    total_credit: Mapped[int] = mapped_column(Amount())
    fee: Mapped[int] = mapped_column(Amount())
    total_reward: Mapped[int] = mapped_column(Amount(), default=0, server_default="0")
    """Network-token base units minted as rewards with this epoch (market/rewards)."""
    reward_note: Mapped[str | None] = mapped_column(String(300))
    """How the rewards were decided: pool, cap, or why there are none."""
    tx_hash: Mapped[str | None] = mapped_column(String(66))
    """The settlement transaction that was mined (set when the settlement is booked)."""
    block: Mapped[int | None] = mapped_column(BigInteger())
    sent_tx_hash: Mapped[str | None] = mapped_column(String(66))
    """The last settlement transaction sent: the one the epoch waits on while `submitted` (a
    later send replaces an earlier one at the same nonce, at higher fees)."""
    sent_nonce: Mapped[int | None] = mapped_column(BigInteger())
    sent_max_fee_per_gas: Mapped[int | None] = mapped_column(Amount())
    """wei, as are `sent_max_priority_fee_per_gas`."""
    sent_max_priority_fee_per_gas: Mapped[int | None] = mapped_column(Amount())
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    submitted_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    settled_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class EpochLine(Base):
    """One buyer's debit or one provider's credit in an epoch's batch."""

    __tablename__ = "epoch_lines"
    __table_args__ = (UniqueConstraint("epoch", "kind", "address"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    epoch: Mapped[int] = mapped_column(ForeignKey("epochs.number"), index=True)
    kind: Mapped[LineKind] = mapped_column(enum_column(LineKind, "epoch_line_kind", length=8))
    address: Mapped[str] = mapped_column(String(42))
    amount: Mapped[int] = mapped_column(Amount())


class EpochRewardWeight(Base):
    """One provider's reward weight on one model in an epoch: verified output tokens, how
    many of them were measured, the efficiency multiplier (milli-units) and why, and whether
    the provider was eligible (`excluded`: why not, e.g. below the minimum stake on-chain)."""

    __tablename__ = "epoch_reward_weights"
    __table_args__ = (UniqueConstraint("epoch", "address", "model"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    epoch: Mapped[int] = mapped_column(ForeignKey("epochs.number"), index=True)
    address: Mapped[str] = mapped_column(String(42))
    model: Mapped[str] = mapped_column(String(256))
    tokens_base: Mapped[int] = mapped_column(BigInteger())
    """Output tokens of receipts whose energy was not measured (multiplier 1)."""
    tokens_measured: Mapped[int] = mapped_column(BigInteger())
    joules_per_token: Mapped[str | None] = mapped_column(String(32))
    multiplier_milli: Mapped[int] = mapped_column(Integer())
    weight: Mapped[int] = mapped_column(BigInteger())
    reason: Mapped[str] = mapped_column(String(300))
    excluded: Mapped[str | None] = mapped_column(String(300))


class ChainReconciliation(Base):
    """One check of the ledger against the contract at `block`
    (`market.settlement.reconcile`): how many figures disagreed, and which (`detail`, JSON,
    the first ones). `accounts_compared`: False when a settlement stood between the chain and
    the ledger, so that only what the contract holds in all was compared."""

    __tablename__ = "chain_reconciliations"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    checked_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
    block: Mapped[int] = mapped_column(BigInteger())
    chain_epoch: Mapped[int] = mapped_column(Integer())
    ledger_epoch: Mapped[int] = mapped_column(Integer())
    accounts_compared: Mapped[bool] = mapped_column(Boolean())
    differences: Mapped[int] = mapped_column(Integer())
    detail: Mapped[str] = mapped_column(Text())
