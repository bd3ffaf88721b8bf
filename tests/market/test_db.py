"""Column types, engines and the transaction scope, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import Engine, select, text
from sqlalchemy.exc import IntegrityError, StatementError
from sqlalchemy.orm import Session, sessionmaker

from market.db import create_engine, session_scope, utcnow
from market.ledger.models import Account, OwnerKind

BIG = [0, 1, -1, 2**63 - 1, 2**63, 2**64 + 7, 2**255, 2**256 - 1, -(2**255), 10**77]


def _account(name: str, balance: int) -> Account:
    return Account(
        name=name, owner_kind=OwnerKind.PROTOCOL, owner=None, bucket=name, balance=balance
    )


@pytest.mark.parametrize("value", BIG, ids=str)
def test_amount_round_trips_as_int(session_factory: sessionmaker[Session], value: int) -> None:
    with session_scope(session_factory) as session:
        session.add(_account("round-trip", value))
    with session_scope(session_factory) as session:
        stored = session.scalars(select(Account.balance).where(Account.name == "round-trip")).one()
        raw = session.execute(text("SELECT balance FROM ledger_accounts")).scalar_one()
    assert type(stored) is int
    assert stored == value
    assert str(raw) == str(value)  # exact in the database too, not a rounded float


@pytest.mark.parametrize("bad", [1.0, True, Decimal(5), "5"], ids=repr)
def test_amount_refuses_anything_but_int(session: Session, bad: object) -> None:
    session.add(_account("bad", bad))  # type: ignore[arg-type]
    with pytest.raises(StatementError, match="amounts are int base units"):
        session.flush()


def test_amount_refuses_more_than_78_digits(session: Session) -> None:
    session.add(_account("huge", 10**78))
    with pytest.raises(StatementError, match="more than 78 digits"):
        session.flush()


def test_times_come_back_aware_in_utc(session_factory: sessionmaker[Session]) -> None:
    plus_two = timezone(timedelta(hours=2))
    written = datetime(2026, 1, 2, 3, 4, 5, 6000, tzinfo=plus_two)
    with session_scope(session_factory) as session:
        account = _account("time", 0)
        account.created_at = written
        session.add(account)
    with session_scope(session_factory) as session:
        read = session.scalars(select(Account.created_at)).one()
    assert read.tzinfo is not None
    assert read.utcoffset() == timedelta(0)
    assert read == written


def test_naive_times_are_refused(session: Session) -> None:
    account = _account("naive", 0)
    account.created_at = datetime(2026, 1, 1)  # naive on purpose
    session.add(account)
    with pytest.raises(StatementError, match="naive datetime"):
        session.flush()


def test_session_scope_commits_on_success(session_factory: sessionmaker[Session]) -> None:
    with session_scope(session_factory) as session:
        session.add(_account("kept", 1))
    with session_scope(session_factory) as session:
        assert session.scalars(select(Account.name)).all() == ["kept"]


def test_session_scope_rolls_back_on_error(session_factory: sessionmaker[Session]) -> None:
    def fail_after_writing() -> None:
        with session_scope(session_factory) as session:
            session.add(_account("dropped", 1))
            session.flush()
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        fail_after_writing()
    with session_scope(session_factory) as session:
        assert session.scalars(select(Account.name)).all() == []


def test_sqlite_has_foreign_keys_and_wal(sqlite_url: str) -> None:
    engine = create_engine(sqlite_url)
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar_one() == 1
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar_one() == "wal"
    finally:
        engine.dispose()


def test_a_dangling_foreign_key_is_refused(engine: Engine) -> None:
    """Off by default on SQLite; the engine turns it on."""
    with pytest.raises(IntegrityError), engine.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO api_keys (buyer_id, prefix, key_hash, created_at) "
            "VALUES (12345, 'sk-jm-x', 'h', '2026-01-01 00:00:00')"
        )


def test_sqlite_directory_is_created(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "market.sqlite3"
    engine = create_engine(f"sqlite:///{target}")
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
    finally:
        engine.dispose()
    assert target.parent.is_dir()


def test_in_memory_sqlite_is_one_database() -> None:
    engine = create_engine("sqlite://")
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("CREATE TABLE t (x INTEGER)")
        with engine.begin() as conn:
            assert conn.exec_driver_sql("SELECT count(*) FROM t").scalar_one() == 0
    finally:
        engine.dispose()


def test_postgres_url_spellings_are_normalised() -> None:
    engine = create_engine("postgres://u:p@127.0.0.1:1/db")
    try:
        assert engine.url.drivername == "postgresql+psycopg"
    finally:
        engine.dispose()


def test_now_is_utc() -> None:
    assert utcnow().tzinfo is UTC
