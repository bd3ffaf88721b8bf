"""Queries of the settlement package: cursors, epochs, their lines, and receipts by epoch."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Row, delete, func, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from market.db import utcnow
from market.jobs.models import Receipt
from market.reviews.models import ReceiptCheckStatus
from market.settlement.models import (
    ChainCursor,
    Epoch,
    EpochLine,
    EpochRewardWeight,
    EpochStatus,
)

_VOID = ReceiptCheckStatus.VOID.value

STREAM_CHUNK = 5_000
"""Receipts fetched per round trip when an epoch's receipts are streamed."""


class SettlementRepository:
    """Reads and writes of settlement rows within the caller's session."""

    def __init__(self, session: Session) -> None:
        self.session = session

    # -- cursors -------------------------------------------------------------------------

    def lock_cursor(self, name: str, initial: int) -> ChainCursor:
        """The cursor `name` (created at `initial` if new), locked until the transaction ends.

        On PostgreSQL `SELECT ... FOR UPDATE`; on SQLite every transaction already holds the
        database's write lock (`BEGIN IMMEDIATE`).
        """
        insert = (
            pg_insert if self.session.get_bind().dialect.name == "postgresql" else sqlite_insert
        )
        self.session.execute(
            insert(ChainCursor)
            .values(name=name, position=initial, updated_at=utcnow())
            .on_conflict_do_nothing(index_elements=["name"])
        )
        stmt = (
            select(ChainCursor)
            .where(ChainCursor.name == name)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
        return self.session.scalars(stmt).one()

    # -- epochs --------------------------------------------------------------------------

    def get_epoch(self, number: int, *, for_update: bool = False) -> Epoch | None:
        """Epoch `number`."""
        stmt = select(Epoch).where(Epoch.number == number)
        if for_update:
            stmt = stmt.with_for_update()
        return self.session.scalars(stmt.execution_options(populate_existing=True)).one_or_none()

    def unsettled_epoch(self) -> Epoch | None:
        """The oldest epoch not yet settled (there is at most one)."""
        stmt = (
            select(Epoch).where(Epoch.status != EpochStatus.SETTLED).order_by(Epoch.number).limit(1)
        )
        return self.session.scalars(stmt).one_or_none()

    def last_epoch_number(self) -> int:
        """The highest epoch number recorded (0 if none)."""
        return int(self.session.scalar(select(func.max(Epoch.number))) or 0)

    def list_epochs(self, limit: int, before: int | None) -> Sequence[Epoch]:
        """Epochs, newest first."""
        stmt = select(Epoch).order_by(Epoch.number.desc()).limit(limit)
        if before is not None:
            stmt = stmt.where(Epoch.number < before)
        return self.session.scalars(stmt).all()

    def lines_of(self, number: int) -> Sequence[EpochLine]:
        """The epoch's debit and credit lines, by kind and address."""
        stmt = (
            select(EpochLine)
            .where(EpochLine.epoch == number)
            .order_by(EpochLine.kind, EpochLine.address)
        )
        return self.session.scalars(stmt).all()

    def reward_weights_of(self, number: int) -> Sequence[EpochRewardWeight]:
        """The reward weights decided for epoch `number`, by address and model."""
        stmt = (
            select(EpochRewardWeight)
            .where(EpochRewardWeight.epoch == number)
            .order_by(EpochRewardWeight.address, EpochRewardWeight.model)
        )
        return self.session.scalars(stmt).all()

    def add(self, *rows: Any) -> None:
        """Adds rows and flushes."""
        self.session.add_all(rows)
        self.session.flush()

    # -- receipts ------------------------------------------------------------------------

    def pairs_where(self, where: list[ColumnElement[bool]]) -> list[tuple[str, str, int]]:
        """(buyer, provider, sum of charges) of the receipts matching `where`, the pair with
        the oldest receipt first."""
        stmt = (
            select(Receipt.buyer_address, Receipt.provider_address, func.sum(Receipt.charge))
            .where(*where)
            .group_by(Receipt.buyer_address, Receipt.provider_address)
            .order_by(
                func.min(Receipt.verified_at), Receipt.buyer_address, Receipt.provider_address
            )
        )
        return [
            (buyer, provider, int(total)) for buyer, provider, total in self.session.execute(stmt)
        ]

    def last_covered(
        self, where: list[ColumnElement[bool]], buyer: str, covered: int
    ) -> tuple[datetime, str] | None:
        """(verified_at, job_id) of the newest of the buyer's receipts matching `where`
        such that it and all older ones (in (verified_at, job_id) order) charge at most
        `covered` together; None if even the oldest charges more. Summed here, not in SQL
        (amounts are text on SQLite)."""
        stmt = (
            select(Receipt.verified_at, Receipt.job_id, Receipt.charge)
            .where(*where, Receipt.buyer_address == buyer)
            .order_by(Receipt.verified_at, Receipt.job_id)
        )
        last, total = None, 0
        for verified_at, job_id, charge in self.session.execute(stmt):
            total += charge
            if total > covered:
                break
            last = verified_at, job_id
        return last

    def cursor_position(self, name: str) -> int | None:
        """Where the cursor `name` stands (None: never used), without locking it."""
        return self.session.scalar(select(ChainCursor.position).where(ChainCursor.name == name))

    def last_settled_number(self) -> int:
        """The newest epoch the ledger has booked as settled (0: none)."""
        number = self.session.scalar(
            select(func.max(Epoch.number)).where(Epoch.status == EpochStatus.SETTLED)
        )
        return int(number or 0)

    def unsettled_charges(self, settled: int) -> dict[tuple[str, str], tuple[int, int]]:
        """(sum of charges, sum of fees) by (buyer, provider) of the charged receipts that no
        epoch up to `settled` holds; void receipts (their charge reversed) are left out.
        Summed in Python: amounts are text on SQLite."""
        stmt = select(
            Receipt.buyer_address, Receipt.provider_address, Receipt.charge, Receipt.fee
        ).where(
            or_(Receipt.epoch.is_(None), Receipt.epoch > settled),
            or_(Receipt.check_status.is_(None), Receipt.check_status != _VOID),
        )
        sums: dict[tuple[str, str], tuple[int, int]] = {}
        for buyer, provider, charge, fee in self.session.execute(stmt):
            total, fees = sums.get((buyer, provider), (0, 0))
            sums[buyer, provider] = (total + charge, fees + fee)
        return sums

    def discard_epoch(self, number: int) -> int:
        """Deletes epoch `number` with its lines and reward weights and puts its receipts back
        in no epoch; how many receipts it held."""
        self.session.execute(delete(EpochRewardWeight).where(EpochRewardWeight.epoch == number))
        self.session.execute(delete(EpochLine).where(EpochLine.epoch == number))
        self.session.execute(delete(Epoch).where(Epoch.number == number))
        released = self.session.execute(
            update(Receipt)
            .where(Receipt.epoch == number)
            .values(epoch=None, leaf_index=None)
            .execution_options(synchronize_session=False)
        )
        return int(released.rowcount)  # type: ignore[attr-defined]

    def stream_epoch(self, number: int) -> Iterator[Row[str, str, str, int, int]]:
        """(receipt_hash, buyer, provider, charge, fee) of the epoch's receipts by leaf index,
        fetched in chunks so that memory does not grow with the epoch."""
        stmt = (
            select(
                Receipt.receipt_hash,
                Receipt.buyer_address,
                Receipt.provider_address,
                Receipt.charge,
                Receipt.fee,
            )
            .where(Receipt.epoch == number)
            .order_by(Receipt.leaf_index)
            .execution_options(yield_per=STREAM_CHUNK)
        )
        yield from self.session.execute(stmt)

    def epoch_hashes(self, number: int) -> Iterator[str]:
        """The epoch's receipt hashes by leaf index, streamed."""
        stmt = (
            select(Receipt.receipt_hash)
            .where(Receipt.epoch == number)
            .order_by(Receipt.leaf_index)
            .execution_options(yield_per=STREAM_CHUNK)
        )
        yield from self.session.scalars(stmt)

    def get_receipt(self, job_id: str) -> Receipt | None:
        """The receipt of `job_id`."""
        return self.session.get(Receipt, job_id)
