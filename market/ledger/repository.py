"""Queries on the ledger tables. No business rules here: the service decides, this fetches."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from market.ledger.models import Account, Hold, OwnerKind, Posting, Transfer, TransferKind


@dataclass(frozen=True)
class AccountRef:
    """An account's identity: `owner_kind:owner:bucket` (or `owner_kind:bucket` if unowned)."""

    owner_kind: OwnerKind
    owner: str | None
    bucket: str

    @property
    def name(self) -> str:
        """The account's unique name."""
        if self.owner is None:
            return f"{self.owner_kind.value}:{self.bucket}"
        return f"{self.owner_kind.value}:{self.owner}:{self.bucket}"


@dataclass(frozen=True)
class OwnerPosting:
    """A posting on one of an owner's accounts, with what the statement needs of it."""

    posting_id: int
    transfer_id: int
    kind: TransferKind
    account: str
    bucket: str
    amount: int
    job_id: str | None
    epoch: int | None
    tx_hash: str | None
    log_index: int | None
    created_at: datetime


class LedgerRepository:
    """Reads and writes of ledger rows within the caller's session (which owns the commit)."""

    def __init__(self, session: Session) -> None:
        self.session = session

    @property
    def _dialect(self) -> str:
        return self.session.get_bind().dialect.name

    def ensure_accounts(self, refs: Iterable[AccountRef]) -> None:
        """Creates the accounts that do not exist yet, racing writers notwithstanding.

        Inserted in name order, like `lock_accounts`, since a new row stays locked by its
        inserting transaction until it commits.
        """
        unique = {r.name: r for r in refs}
        rows = [
            {"name": r.name, "owner_kind": r.owner_kind, "owner": r.owner, "bucket": r.bucket}
            for _, r in sorted(unique.items())
        ]
        if not rows:
            return
        insert = pg_insert if self._dialect == "postgresql" else sqlite_insert
        for row in rows:
            stmt = (
                insert(Account)
                .values(balance=0, **row)
                .on_conflict_do_nothing(index_elements=["name"])
            )
            self.session.execute(stmt)

    def lock_accounts(self, names: Iterable[str]) -> dict[str, Account]:
        """The named accounts, locked for update in name order (a fixed order avoids deadlocks).

        `populate_existing` makes the returned balances the ones current after the lock was
        granted, not those an earlier read left in the identity map.
        """
        ordered = sorted(set(names))
        stmt = (
            select(Account)
            .where(Account.name.in_(ordered))
            .order_by(Account.name)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
        found = {a.name: a for a in self.session.scalars(stmt)}
        missing = [n for n in ordered if n not in found]
        if missing:
            raise LookupError(f"ledger accounts missing: {missing}")
        return found

    def get_account(self, name: str) -> Account | None:
        """The account named `name`, if it exists."""
        return self.session.scalars(select(Account).where(Account.name == name)).one_or_none()

    def accounts_of(self, owner: str) -> Sequence[Account]:
        """Every account `owner` has, in name order."""
        stmt = select(Account).where(Account.owner == owner).order_by(Account.name)
        return self.session.scalars(stmt).all()

    def get_transfer_by_key(self, idempotency_key: str) -> Transfer | None:
        """The transfer posted under `idempotency_key`, if any."""
        stmt = select(Transfer).where(Transfer.idempotency_key == idempotency_key)
        return self.session.scalars(stmt).one_or_none()

    def add_transfer(self, transfer: Transfer) -> Transfer:
        """Adds a transfer and its postings, and flushes so that it has its id."""
        self.session.add(transfer)
        self.session.flush()
        return transfer

    def get_hold(self, job_id: str, *, for_update: bool = False) -> Hold | None:
        """The hold of `job_id`; locked for update if asked."""
        stmt = select(Hold).where(Hold.job_id == job_id)
        if for_update:
            stmt = stmt.with_for_update().execution_options(populate_existing=True)
        return self.session.scalars(stmt).one_or_none()

    def add_hold(self, hold: Hold) -> Hold:
        """Adds a hold and flushes."""
        self.session.add(hold)
        self.session.flush()
        return hold

    def postings_of(self, owner: str) -> Sequence[OwnerPosting]:
        """Every posting on `owner`'s accounts, oldest first."""
        stmt = (
            select(
                Posting.id,
                Posting.transfer_id,
                Transfer.kind,
                Account.name,
                Account.bucket,
                Posting.amount,
                Transfer.job_id,
                Transfer.epoch,
                Transfer.tx_hash,
                Transfer.log_index,
                Transfer.created_at,
            )
            .join(Transfer, Transfer.id == Posting.transfer_id)
            .join(Account, Account.id == Posting.account_id)
            .where(Account.owner == owner)
            .order_by(Posting.id)
        )
        return [
            OwnerPosting(
                posting_id=row[0],
                transfer_id=row[1],
                kind=row[2],
                account=row[3],
                bucket=row[4],
                amount=row[5],
                job_id=row[6],
                epoch=row[7],
                tx_hash=row[8],
                log_index=row[9],
                created_at=row[10],
            )
            for row in self.session.execute(stmt)
        ]

    def stored_balances(self) -> dict[str, int]:
        """Every account's stored balance, by name."""
        return {
            name: bal for name, bal in self.session.execute(select(Account.name, Account.balance))
        }

    def derived_balances(self) -> dict[str, int]:
        """Every account's balance recomputed from its postings, by name.

        Summed in Python: SQLite cannot add integers above 2**63 exactly.
        """
        totals: dict[str, int] = {}
        stmt = select(Account.name, Posting.amount).join(Account, Account.id == Posting.account_id)
        for name, amount in self.session.execute(stmt):
            totals[name] = totals.get(name, 0) + amount
        return totals

    def unbalanced_transfers(self) -> list[int]:
        """Ids of transfers whose postings do not sum to zero (should always be empty)."""
        totals: dict[int, int] = {}
        for transfer_id, amount in self.session.execute(
            select(Posting.transfer_id, Posting.amount)
        ):
            totals[transfer_id] = totals.get(transfer_id, 0) + amount
        return sorted(tid for tid, total in totals.items() if total != 0)
