"""Database access: engine and sessions from the settings, the declarative base, column types.

- SQLite (embedded mode) gets foreign keys on, WAL, a busy timeout, and `BEGIN IMMEDIATE` for
  every transaction, so that writers queue up instead of failing or losing updates (SQLite has
  no `SELECT ... FOR UPDATE`; its database-wide write lock plays that part).
- PostgreSQL goes through psycopg 3 (`postgresql+psycopg://`).
- Money is `Amount`: `NUMERIC(78, 0)` on PostgreSQL (any uint256 fits) and a decimal string on
  SQLite, whose NUMERIC affinity would silently turn integers above 2**63 into floats. Either
  way Python sees `int`, never `float` or `Decimal`.
- Services flush and never commit; `session_scope()` is what a request or a task wraps its
  work in, and it commits or rolls back.
- The schema comes from Alembic (`migrate()`); the app never calls `create_all`.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import (
    BigInteger,
    DateTime,
    Dialect,
    Engine,
    Enum,
    Integer,
    MetaData,
    Numeric,
    String,
    event,
)
from sqlalchemy import create_engine as sa_create_engine
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.pool import StaticPool
from sqlalchemy.types import TypeDecorator, TypeEngine

from market.config import get_settings, normalize_database_url

REPO_ROOT = Path(__file__).resolve().parents[1]
ALEMBIC_INI = REPO_ROOT / "alembic.ini"
MIGRATIONS_DIR = (
    REPO_ROOT / "migrations"
    if (REPO_ROOT / "migrations").is_dir()
    else Path(__file__).resolve().parent / "_migrations"  # installed from the wheel
)

NAMING_CONVENTION: dict[str, str] = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

AMOUNT_DIGITS = 78
"""Decimal digits of an amount column: enough for any signed 256-bit integer."""


class Base(DeclarativeBase):
    """Declarative base of every market table; constraint names follow `NAMING_CONVENTION`."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


# -- column types -------------------------------------------------------------------------


def utcnow() -> datetime:
    """The current time, timezone-aware, in UTC."""
    return datetime.now(UTC)


class Amount(TypeDecorator[int]):
    """An integer amount in base units, up to 78 digits, that round-trips as `int`.

    Binding refuses anything but `int` (a `bool`, `float` or `Decimal` is a bug upstream).
    On SQLite the column holds text, so SQL must not compare, sort or sum amounts there:
    do arithmetic in Python (the ledger keeps running balances for that reason).
    """

    impl = Numeric(AMOUNT_DIGITS, 0)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(String(AMOUNT_DIGITS + 1))
        return dialect.type_descriptor(Numeric(AMOUNT_DIGITS, 0, asdecimal=True))

    def process_bind_param(self, value: int | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if type(value) is not int:
            raise TypeError(f"amounts are int base units, got {type(value).__name__}: {value!r}")
        if len(str(abs(value))) > AMOUNT_DIGITS:
            raise ValueError(f"amount {value} has more than {AMOUNT_DIGITS} digits")
        if dialect.name == "sqlite":
            return str(value)
        return Decimal(value)

    def process_result_value(self, value: Any, dialect: Dialect) -> int | None:
        if value is None:
            return None
        if isinstance(value, Decimal):
            if value != value.to_integral_value():
                raise ValueError(f"stored amount {value} is not an integer")
            return int(value)
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            return int(value)
        raise TypeError(f"stored amount has type {type(value).__name__}: {value!r}")


def enum_column(enum_cls: type[enum.Enum], name: str, length: int = 16) -> Enum:
    """A string enum column stored as its values, checked by a constraint on both dialects."""
    return Enum(
        enum_cls,
        name=name,
        native_enum=False,
        create_constraint=True,
        length=length,
        values_callable=lambda cls: [str(member.value) for member in cls],
    )


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored in UTC and always returned timezone-aware (SQLite forgets the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: times are timezone-aware UTC")
        value = value.astimezone(UTC)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


BigIntPK = BigInteger().with_variant(Integer(), "sqlite")
"""A 64-bit surrogate key; on SQLite plain INTEGER, the only type that autoincrements there."""


# -- engines and sessions -----------------------------------------------------------------


SQLITE_BUSY_TIMEOUT_MS = 30_000
"""How long a SQLite connection waits for another's write lock before `database is locked`."""


def create_engine(
    url: str | None = None, *, echo: bool = False, busy_timeout_ms: int = SQLITE_BUSY_TIMEOUT_MS
) -> Engine:
    """An engine for `url` (default: the settings' `database_url`), set up for its dialect.

    `busy_timeout_ms` (SQLite only): 0 makes a transaction that finds the write lock taken
    fail at once (at its `BEGIN IMMEDIATE`) instead of waiting for it."""
    if url is None:
        settings = get_settings()
        url, echo = settings.database_url, settings.sql_echo
    url = normalize_database_url(url)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(url, echo, busy_timeout_ms)
    return sa_create_engine(url, echo=echo, pool_pre_ping=True)


def sqlite_in_memory(url: str) -> bool:
    """Whether a SQLite URL names an in-memory database (one per connection)."""
    database = make_url(url).database or ""
    return database in ("", ":memory:") or database.startswith("file::memory:")


def _sqlite_engine(url: str, echo: bool, busy_timeout_ms: int = SQLITE_BUSY_TIMEOUT_MS) -> Engine:
    parsed = make_url(url)
    database = parsed.database or ""
    in_memory = sqlite_in_memory(url)
    connect_args = {"check_same_thread": False, "timeout": busy_timeout_ms / 1000}
    kwargs: dict[str, Any] = {"connect_args": connect_args}
    if in_memory:
        kwargs["poolclass"] = StaticPool  # one connection, else each would see its own DB
    else:
        Path(database).expanduser().resolve().parent.mkdir(parents=True, exist_ok=True)
        # The most recently used connection first: its page cache is the warmest (SQLite
        # drops a connection's cache when another connection has written since its last use).
        kwargs["pool_use_lifo"] = True
    engine = sa_create_engine(url, echo=echo, **kwargs)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control from the sqlite3 module so that `begin` below decides.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        if not in_memory:
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.close()

    # Every transaction takes the write lock at its start, sent on the driver's connection
    # by the dialect: SQLAlchemy then wraps a failure (`database is locked`) as it wraps any
    # other and leaves the `Connection` ready for the next `begin`, which a `begin` event
    # listener raising from `exec_driver_sql` would not; it also skips that call's
    # execution context (about 30 µs a transaction).
    engine.dialect.do_begin = _begin_immediate  # type: ignore[method-assign]
    return engine


def _begin_immediate(dbapi_connection: Any) -> None:
    dbapi_connection.execute("BEGIN IMMEDIATE")


def make_session_factory(bind: Engine | Connection) -> sessionmaker[Session]:
    """Sessions bound to `bind`, an engine or one connection (each session then begins and
    commits its transaction on it); objects stay readable after commit."""
    return sessionmaker(bind=bind, expire_on_commit=False)


@lru_cache(maxsize=1)
def get_engine() -> Engine:
    """The process's engine, from the settings."""
    return create_engine()


@lru_cache(maxsize=1)
def get_session_factory() -> sessionmaker[Session]:
    """The process's session factory, bound to `get_engine()`."""
    return make_session_factory(get_engine())


@contextmanager
def session_scope(factory: sessionmaker[Session] | None = None) -> Iterator[Session]:
    """A session whose transaction commits if the block succeeds and rolls back if it raises.

    Requests and tasks own their transaction through this; services only flush.
    """
    session = (factory or get_session_factory())()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


# -- migrations ---------------------------------------------------------------------------


def alembic_config(url: str | None = None) -> Config:
    """An Alembic `Config` for this repository's migrations, targeting `url` if given.

    The URL travels in `config.attributes` (not the ini), so passwords with `%` are safe.
    """
    config = Config(str(ALEMBIC_INI)) if ALEMBIC_INI.exists() else Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["configure_logger"] = False
    if url is not None:
        config.attributes["database_url"] = url
    return config


def migrate(url: str | None = None, revision: str = "head") -> None:
    """Upgrades the database at `url` (default: the settings') to `revision`."""
    command.upgrade(alembic_config(url), revision)
