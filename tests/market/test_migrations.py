"""The migrations build exactly the models' schema, on both dialects, and undo cleanly."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from market.db import REPO_ROOT, alembic_config, create_engine, migrate
from market.models import Base

BOTH = pytest.mark.parametrize("empty_database_url", ["sqlite", "postgresql"], indirect=True)

# Every table the models declare, and Alembic's own: the migrations create exactly these.
TABLES = set(Base.metadata.tables) | {"alembic_version"}


def _diff(url: str) -> list[object]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            return list(compare_metadata(context, Base.metadata))
    finally:
        engine.dispose()


def _tables(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


@BOTH
def test_upgrade_head_matches_the_models(empty_database_url: str) -> None:
    migrate(empty_database_url)
    assert _tables(empty_database_url) == TABLES
    assert _diff(empty_database_url) == []


@BOTH
def test_downgrade_base_removes_everything_and_upgrade_again_works(
    empty_database_url: str,
) -> None:
    config = alembic_config(empty_database_url)
    command.upgrade(config, "head")
    command.downgrade(config, "base")
    assert _tables(empty_database_url) <= {"alembic_version"}
    command.upgrade(config, "head")
    assert _diff(empty_database_url) == []


@BOTH
def test_models_differ_from_an_empty_database(empty_database_url: str) -> None:
    """The comparison itself can see a difference (guards against a vacuous pass)."""
    assert _diff(empty_database_url) != []


@pytest.mark.parametrize("empty_database_url", ["sqlite"], indirect=True)
def test_the_alembic_cli_takes_the_url_from_the_settings(empty_database_url: str) -> None:
    """`alembic upgrade head` from the repository root, configured by MARKET_DATABASE_URL."""
    env = {**os.environ, "MARKET_DATABASE_URL": empty_database_url}
    alembic = Path(sys.executable).with_name("alembic")
    done = subprocess.run(
        [str(alembic), "upgrade", "head"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert _tables(empty_database_url) == TABLES
    assert _diff(empty_database_url) == []


def test_offline_sql_for_postgresql_includes_the_journal_triggers(
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = alembic_config("postgresql+psycopg://nobody@127.0.0.1:1/offline")
    command.upgrade(config, "head", sql=True)
    sql = capsys.readouterr().out
    assert "NUMERIC(78, 0)" in sql
    assert "CREATE CONSTRAINT TRIGGER ledger_postings_balanced" in sql
    assert "DEFERRABLE INITIALLY DEFERRED" in sql
