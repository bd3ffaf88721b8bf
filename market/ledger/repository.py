"""Queries on the ledger tables. No business rules here: the service decides, this fetches."""

from __future__ import annotations

import functools
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, bindparam, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from market.db import utcnow
from market.ledger.models import (
    Account,
    Hold,
    HoldStatus,
    OwnerKind,
    Posting,
    Transfer,
    TransferKind,
)
from market.prepared import Prepared

_ACCOUNTS = cast(Table, Account.__table__)
_TRANSFERS = cast(Table, Transfer.__table__)
_POSTINGS = cast(Table, Posting.__table__)
_HOLDS = cast(Table, Hold.__table__)

_KNOWN: weakref.WeakKeyDictionary[object, set[str]] = weakref.WeakKeyDictionary()
"""Per engine (or connection) sessions are bound to, names of accounts seen to exist.
Accounts are never deleted, so a writer that needs only known accounts skips
`ensure_accounts` and goes straight to the lock; a name that is gone anyway (its creating
transaction rolled back, a test truncated the table) is found missing by the lock, created,
and locked again."""


@functools.cache
def _lock(count: int) -> Prepared:
    """`SELECT ... FOR UPDATE` of `count` accounts by name (binds `name_0` ...), in name order."""
    names: list[Any] = [bindparam(f"name_{i}") for i in range(count)]
    return Prepared(
        select(_ACCOUNTS.c.id, _ACCOUNTS.c.name, _ACCOUNTS.c.owner_kind, _ACCOUNTS.c.balance)
        .where(_ACCOUNTS.c.name.in_(names))
        .order_by(_ACCOUNTS.c.name)
        .with_for_update()
    )


_SET_BALANCE = Prepared(
    update(_ACCOUNTS)
    .where(_ACCOUNTS.c.id == bindparam("account_id"))
    .values(balance=bindparam("new_balance"))
)
_INSERT_POSTINGS = Prepared(_POSTINGS.insert())
_INSERT_HOLD = Prepared(_HOLDS.insert().returning(_HOLDS.c.id))
_LOCK_HOLD = Prepared(
    select(
        _HOLDS.c.id,
        _HOLDS.c.buyer,
        _HOLDS.c.amount,
        _HOLDS.c.status,
        _HOLDS.c.provider,
        _HOLDS.c.charged,
        _HOLDS.c.fee,
    )
    .where(_HOLDS.c.job_id == bindparam("job_id"))
    .with_for_update()
)
_CLOSE_HOLD = Prepared(
    update(_HOLDS)
    .where(_HOLDS.c.id == bindparam("hold_id"))
    .values(
        status=bindparam("new_status"),
        provider=bindparam("new_provider"),
        charged=bindparam("new_charged"),
        fee=bindparam("new_fee"),
        closed_at=bindparam("new_closed_at"),
    )
)
_RELEASE_HOLD = Prepared(
    update(_HOLDS)
    .where(_HOLDS.c.id == bindparam("hold_id"))
    .values(status=bindparam("new_status"), closed_at=bindparam("new_closed_at"))
)
_INSERT_TRANSFER: dict[str, Prepared] = {}


def _insert_transfer(dialect: str) -> Prepared:
    """`INSERT ... ON CONFLICT (idempotency_key) DO NOTHING RETURNING id` for the dialect."""
    stmt = _INSERT_TRANSFER.get(dialect)
    if stmt is None:
        insert = pg_insert if dialect == "postgresql" else sqlite_insert
        stmt = Prepared(
            insert(_TRANSFERS)
            .values(
                kind=bindparam("kind"),
                idempotency_key=bindparam("idempotency_key"),
                job_id=bindparam("job_id"),
                created_at=bindparam("created_at"),
            )
            .on_conflict_do_nothing(index_elements=["idempotency_key"])
            .returning(_TRANSFERS.c.id)
        )
        _INSERT_TRANSFER[dialect] = stmt
    return stmt


@dataclass
class LockedAccount:
    """An account row locked for update: its id, kind, and balance as this writer sees it."""

    id: int
    owner_kind: OwnerKind
    balance: int
    changed: bool = False


@dataclass(frozen=True)
class LockedHold:
    """A hold row locked for update, as `settle_hold` and `release_hold` need it."""

    id: int
    buyer: str
    amount: int
    status: HoldStatus
    provider: str | None
    charged: int | None
    fee: int | None


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

    def lock_balances(self, refs: Iterable[AccountRef]) -> dict[str, LockedAccount]:
        """The accounts, created if new, locked for update in name order, by name.

        One `SELECT ... FOR UPDATE` when every account is known to exist (the usual case);
        otherwise `ensure_accounts` first, as `lock_accounts` callers do.
        """
        unique = {r.name: r for r in refs}
        bind = self.session.get_bind()
        known = _KNOWN.get(bind)
        if known is None:
            known = set()
            _KNOWN[bind] = known
        if not known.issuperset(unique):
            self.ensure_accounts(unique.values())
        locked = self._lock_rows(list(unique))
        if len(locked) < len(unique):  # known once, gone now: create and lock again
            self.ensure_accounts(unique.values())
            locked = self._lock_rows(list(unique))
            missing = sorted(set(unique) - set(locked))
            if missing:
                raise LookupError(f"ledger accounts missing: {missing}")
        known.update(unique)
        return locked

    def _lock_rows(self, names: list[str]) -> dict[str, LockedAccount]:
        params = {f"name_{i}": name for i, name in enumerate(sorted(names))}
        rows = _lock(len(names))(self.session, params)
        return {
            name: LockedAccount(id=row_id, owner_kind=OwnerKind(kind), balance=balance)
            for row_id, name, kind, balance in rows
        }

    def insert_transfer(
        self, kind: TransferKind, idempotency_key: str, job_id: str | None
    ) -> int | None:
        """Inserts a transfer row; its id, or None if the key was already taken."""
        params = {
            "kind": kind,
            "idempotency_key": idempotency_key,
            "job_id": job_id,
            "created_at": utcnow(),
        }
        found = _insert_transfer(self._dialect)(self.session, params).first()
        return None if found is None else int(found[0])

    def insert_postings(self, rows: list[tuple[int, int, int]]) -> None:
        """Inserts (transfer id, account id, amount) postings, in one statement."""
        params = [{"transfer_id": t, "account_id": a, "amount": amount} for t, a, amount in rows]
        _INSERT_POSTINGS(self.session, params)

    def write_balances(self, locked: Iterable[LockedAccount]) -> None:
        """Stores the balances of the locked accounts that changed (one statement), and
        expires any copy of those rows the session holds, so it re-reads them."""
        changed = [a for a in locked if a.changed]
        if not changed:
            return
        params = [{"account_id": a.id, "new_balance": a.balance} for a in changed]
        _SET_BALANCE(self.session, params)
        expire(self.session, Account, [a.id for a in changed])

    def insert_hold(self, job_id: str, buyer: str, amount: int, transfer_id: int) -> Hold:
        """Inserts an open hold row; a detached `Hold` describing it."""
        now = utcnow()
        values = {
            "job_id": job_id,
            "buyer": buyer,
            "amount": amount,
            "status": HoldStatus.OPEN,
            "hold_transfer_id": transfer_id,
            "created_at": now,
        }
        hold_id = _INSERT_HOLD(self.session, values).scalar_one()
        return Hold(id=hold_id, **values)

    def lock_hold(self, job_id: str) -> LockedHold | None:
        """The hold of `job_id`, locked for update (one Core statement), if any."""
        row = _LOCK_HOLD(self.session, {"job_id": job_id}).first()
        if row is None:
            return None
        return LockedHold(row[0], row[1], row[2], HoldStatus(row[3]), row[4], row[5], row[6])

    def close_hold(
        self,
        hold_id: int,
        status: HoldStatus,
        *,
        provider: str | None = None,
        charged: int | None = None,
        fee: int | None = None,
    ) -> datetime:
        """Marks a hold settled (with its charge, fee and provider) or released; the time."""
        now = utcnow()
        if status is HoldStatus.SETTLED:
            params = {
                "hold_id": hold_id,
                "new_status": status,
                "new_provider": provider,
                "new_charged": charged,
                "new_fee": fee,
                "new_closed_at": now,
            }
            _CLOSE_HOLD(self.session, params)
        else:
            params = {"hold_id": hold_id, "new_status": status, "new_closed_at": now}
            _RELEASE_HOLD(self.session, params)
        expire(self.session, Hold, [hold_id])
        return now

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

    def owned_balances(self) -> list[tuple[OwnerKind, str | None, str, int]]:
        """(owner kind, owner, bucket, balance) of every account."""
        stmt = select(Account.owner_kind, Account.owner, Account.bucket, Account.balance)
        return [
            (kind, owner, bucket, int(bal))
            for kind, owner, bucket, bal in self.session.execute(stmt)
        ]

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


def expire(session: Session, cls: type[Any], ids: Iterable[object]) -> None:
    """Expires the session's copies (if any) of `cls` rows written with Core statements."""
    identity_map = session.identity_map
    if not identity_map:
        return
    for row_id in ids:
        obj = identity_map.get(session.identity_key(cls, row_id))
        if obj is not None:
            session.expire(obj)
