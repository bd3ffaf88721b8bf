"""Fixtures for the market's suites: every database test runs on SQLite and on PostgreSQL.

PostgreSQL is a throwaway cluster started once per session (tests/support/postgres.py), or the
server `MARKET_TEST_DATABASE_URL` names (its user must be allowed to create databases). The
schema comes from `alembic upgrade head`, run once per session; each test then starts from
empty tables (PostgreSQL: TRUNCATE after each test, far quicker than a database per test;
SQLite: a fresh copy of a migrated file), so tests may commit from many threads and still
start clean.

If PostgreSQL cannot start, its tests are skipped with the reason, or fail when `CI` is set.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from market.config import get_settings, normalize_database_url
from market.db import create_engine, make_session_factory, migrate
from market.models import Base
from tests.support.postgres import (
    PostgresUnavailableError,
    create_database,
    drop_database,
    start_cluster,
)

DIALECTS = {"sqlite": "sqlite_url", "postgresql": "postgres_url"}
"""Test id of each dialect, and the fixture that makes a fresh database on it."""


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """URL of a PostgreSQL server's maintenance database, where tests create their own."""
    given = os.environ.get("MARKET_TEST_DATABASE_URL")
    if given:
        yield normalize_database_url(given)
        return
    try:
        cluster = start_cluster()
    except PostgresUnavailableError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is required in CI and did not start: {exc}")
        pytest.skip(f"PostgreSQL not available: {exc}")
    try:
        yield cluster.url
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def postgres_database(postgres_server: str) -> Iterator[str]:
    """URL of a database migrated to head once for the session; tests empty it after use."""
    url = create_database(postgres_server)
    migrate(url)
    try:
        yield url
    finally:
        drop_database(postgres_server, url)


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file migrated to head, which per-test files are copied from."""
    path = tmp_path_factory.mktemp("sqlite-template") / "market.sqlite3"
    migrate(f"sqlite:///{path}")
    # Fold the write-ahead log into the file, so that copying the file copies everything.
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("PRAGMA journal_mode = DELETE")
    return path


@pytest.fixture
def postgres_url(postgres_database: str) -> Iterator[str]:
    """A migrated PostgreSQL database with empty tables, emptied again after the test.

    TRUNCATE (unlike DELETE) does not fire the journal's append-only row triggers, and it
    resets the id sequences, so each test sees what a fresh `alembic upgrade head` gives.
    """
    yield postgres_database
    tables = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
    engine = create_engine(postgres_database)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("SET LOCAL lock_timeout = '20s'")
            conn.exec_driver_sql(f"TRUNCATE {tables} RESTART IDENTITY CASCADE")
    finally:
        engine.dispose()


@pytest.fixture
def sqlite_url(sqlite_template: Path, tmp_path: Path) -> str:
    """A fresh, migrated SQLite database for one test."""
    path = tmp_path / "market.sqlite3"
    shutil.copyfile(sqlite_template, path)
    return f"sqlite:///{path}"


@pytest.fixture(params=list(DIALECTS))
def database_url(request: pytest.FixtureRequest) -> str:
    """A fresh, migrated database for one test, once on each dialect."""
    return str(request.getfixturevalue(DIALECTS[request.param]))


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    """An engine on the test's database, set up as the app sets it up."""
    engine = create_engine(database_url)
    try:
        yield engine
    finally:
        engine.dispose()


@pytest.fixture
def session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions on the test's database (each `session_scope` commits for real)."""
    return make_session_factory(engine)


@pytest.fixture
def session(session_factory: sessionmaker[Session]) -> Iterator[Session]:
    """One session for a test; what it does not commit is rolled back at the end."""
    session = session_factory()
    try:
        yield session
    finally:
        session.rollback()
        session.close()


@pytest.fixture
def cli_database(database_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The `market` command line's settings name the test's database (MARKET_DATABASE_URL)."""
    monkeypatch.setenv("MARKET_DATABASE_URL", database_url)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.fixture
def empty_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database (no tables) on the dialect of `request.param`, for migration tests."""
    dialect = request.param
    if dialect == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.sqlite3'}"
        return
    server = str(request.getfixturevalue("postgres_server"))
    url = create_database(server)
    try:
        yield url
    finally:
        drop_database(server, url)
