"""`market.prepared.Prepared` on both dialects: types, RETURNING, executemany, errors, and
the session's transaction."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, cast

import pytest
from sqlalchemy import Table, bindparam, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from market.db import session_scope
from market.ledger.models import Account, OwnerKind, Transfer, TransferKind
from market.prepared import Prepared

ACCOUNTS = cast(Table, Account.__table__)
TRANSFERS = cast(Table, Transfer.__table__)
WHEN = datetime(2026, 11, 22, 12, 30, 15, 123_000, tzinfo=UTC)
BIG = 10**70 + 7

INSERT_ACCOUNT = Prepared(ACCOUNTS.insert().returning(ACCOUNTS.c.id))
READ = Prepared(
    select(ACCOUNTS.c.id, ACCOUNTS.c.owner_kind, ACCOUNTS.c.balance, ACCOUNTS.c.created_at)
    .where(ACCOUNTS.c.name == bindparam("name"))
    .with_for_update()
)
SET_BALANCE = Prepared(
    update(ACCOUNTS).where(ACCOUNTS.c.id == bindparam("account_id")).values(balance=bindparam("b"))
)


def account(name: str, balance: int = 0) -> dict[str, Any]:
    """Every column of a new account row (Prepared takes no Python-side defaults)."""
    return {
        "name": name,
        "owner_kind": OwnerKind.BUYER,
        "owner": "0x" + "11" * 20,
        "bucket": "available",
        "balance": balance,
        "created_at": WHEN,
    }


def test_values_round_trip_through_the_column_types(
    session_factory: sessionmaker[Session],
) -> None:
    with session_scope(session_factory) as session:
        new_id = INSERT_ACCOUNT(session, account("a", BIG)).scalar_one()
    with session_scope(session_factory) as session:
        row = READ(session, {"name": "a"}).one()
        orm = session.get(Account, new_id)
    assert row.id == new_id
    assert row.owner_kind is OwnerKind.BUYER
    assert row.balance == BIG
    assert type(row.balance) is int
    assert row.created_at == WHEN
    assert row.created_at.tzinfo is not None
    assert orm is not None
    assert (orm.balance, orm.created_at) == (BIG, WHEN)


def test_many_parameter_sets_in_one_call(session_factory: sessionmaker[Session]) -> None:
    with session_scope(session_factory) as session:
        ids = [INSERT_ACCOUNT(session, account(f"n{i}")).scalar_one() for i in range(3)]
        SET_BALANCE(session, [{"account_id": i, "b": 100 + i} for i in ids])
    with session_scope(session_factory) as session:
        balances = [READ(session, {"name": f"n{i}"}).one().balance for i in range(3)]
    assert balances == [100 + i for i in ids]


def test_statements_run_in_the_session_transaction(
    session_factory: sessionmaker[Session],
) -> None:
    session = session_factory()
    try:
        INSERT_ACCOUNT(session, account("gone"))
        assert READ(session, {"name": "gone"}).first() is not None
        session.rollback()
        assert READ(session, {"name": "gone"}).first() is None  # a new transaction
        INSERT_ACCOUNT(session, account("kept"))
        session.commit()
    finally:
        session.close()
    with session_scope(session_factory) as session:
        names = set(session.scalars(select(Account.name)))
    assert names == {"kept"}


def test_driver_errors_are_sqlalchemy_errors(session_factory: sessionmaker[Session]) -> None:
    with session_scope(session_factory) as session:
        INSERT_ACCOUNT(session, account("dup"))
    session = session_factory()
    try:
        with pytest.raises(IntegrityError):
            INSERT_ACCOUNT(session, account("dup"))
        session.rollback()
        assert READ(session, {"name": "dup"}).one().balance == 0
    finally:
        session.close()


def test_type_checks_of_the_columns_still_apply(session: Session) -> None:
    with pytest.raises(TypeError, match="amounts are int"):
        INSERT_ACCOUNT(session, account("float", cast(int, 1.5)))
    with pytest.raises(ValueError, match="naive datetime"):
        INSERT_ACCOUNT(session, {**account("naive"), "created_at": datetime(2026, 1, 1)})


def test_missing_values_and_expanding_binds_are_refused(session: Session) -> None:
    values = account("x")
    del values["created_at"]  # has a Python-side default, which Prepared does not run
    with pytest.raises(ValueError, match="missing: created_at"):
        INSERT_ACCOUNT(session, values)
    expanding = Prepared(
        select(TRANSFERS.c.id).where(TRANSFERS.c.kind.in_(bindparam("k", expanding=True)))
    )
    with pytest.raises(ValueError, match="expanding"):
        expanding(session, {"k": [TransferKind.DEPOSIT]})
