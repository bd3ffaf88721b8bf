"""Request-path transactions on a SQLite file (`market.inference.attempt.run_db`): on the
event loop over one kept connection while the write lock is free, in a worker thread when
it is taken, and the kept connection is whole again after a refused `BEGIN IMMEDIATE`."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, cast

import anyio
import pytest
from nacl.signing import SigningKey
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from market.agent_client import AgentClient
from market.config import Settings
from market.db import create_engine, make_session_factory, session_scope
from market.inference.attempt import run_db
from market.routing.table import RoutingTable
from market.runtime import AGENT_TIMEOUT, Runtime


@pytest.fixture
def runtime(sqlite_url: str, tmp_path: Path) -> Runtime:
    engine = create_engine(sqlite_url)
    with engine.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE marks (value TEXT, thread TEXT)")
    return Runtime(
        settings=Settings(database_url=sqlite_url, var_dir=tmp_path),
        sessions=make_session_factory(engine),
        chain=cast(Any, None),
        ticket_key=SigningKey.generate(),
        routing=RoutingTable(),
        agents=AgentClient(AGENT_TIMEOUT),
    )


def _path(runtime: Runtime) -> str:
    return str(runtime.sessions.kw["bind"].url.database)


def _mark(sessions: sessionmaker[Session], value: str) -> str:
    """Inserts a row, then checks from a second connection that the write lock is held."""
    thread = threading.current_thread().name
    with session_scope(sessions) as session:
        session.execute(text("INSERT INTO marks VALUES (:v, :t)"), {"v": value, "t": thread})
        database = session.get_bind().engine.url.database
        other = sqlite3.connect(str(database), timeout=0, isolation_level=None)
        try:
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                other.execute("BEGIN IMMEDIATE")
        finally:
            other.close()
    return thread


def _marks(runtime: Runtime) -> list[tuple[str, str]]:
    with sqlite3.connect(_path(runtime)) as connection:
        return list(connection.execute("SELECT value, thread FROM marks ORDER BY rowid"))


def test_inline_while_free_in_a_thread_while_taken_then_inline_again(runtime: Runtime) -> None:
    async def main() -> list[str]:
        here = threading.current_thread().name
        first = await run_db(runtime, _mark, "first")
        holder = sqlite3.connect(_path(runtime), isolation_level=None, check_same_thread=False)
        holder.execute("BEGIN IMMEDIATE")  # someone else's write, e.g. a background task

        def release() -> None:
            time.sleep(0.3)
            holder.execute("COMMIT")
            holder.close()

        releaser = threading.Thread(target=release)
        releaser.start()
        second = await run_db(runtime, _mark, "second")
        releaser.join()
        third = await run_db(runtime, _mark, "third")
        await runtime.aclose()
        return [here, first, second, third]

    here, first, second, third = anyio.run(main)
    assert first == here, "a free lock: the transaction runs on the event loop"
    assert second != here, "a taken lock: the transaction waits for it in a worker thread"
    assert third == here, "the kept connection begins again after its refused BEGIN"
    assert [value for value, _ in _marks(runtime)] == ["first", "second", "third"]


def test_inline_transactions_share_one_connection(runtime: Runtime) -> None:
    inline = runtime.inline_sessions()
    assert inline is not None
    seen = set()
    for _ in range(3):
        with session_scope(inline) as session:
            seen.add(id(session.connection().connection.dbapi_connection))
    assert len(seen) == 1


def test_a_failed_inline_transaction_leaves_nothing_and_the_next_commits(
    runtime: Runtime,
) -> None:
    inline = runtime.inline_sessions()
    assert inline is not None

    def fail() -> None:
        with session_scope(inline) as session:
            session.execute(text("INSERT INTO marks VALUES ('lost', 'x')"))
            raise RuntimeError("the work failed")

    with pytest.raises(RuntimeError):
        fail()
    _mark(inline, "kept")
    assert [value for value, _ in _marks(runtime)] == ["kept"]
