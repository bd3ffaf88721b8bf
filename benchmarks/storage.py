"""Database bytes per receipt: what one served request leaves in the market's database.

    python -m benchmarks.storage [--quick]

N requests go through the request path's own functions (`benchmarks._data.fill_real`:
`open_job`, `check_receipt`, `complete_job`), spread over 10 buyers and 10 providers: the job
row, the hold, the charge and release transfers with their legs, the receipt row with the
signed envelope as received, and their indexes. Measured: growth of the SQLite file (pages in
use, after a WAL checkpoint), and on PostgreSQL (a throwaway cluster from
`tests/support/postgres.py`, if its binaries are installed) growth of the sum of
`pg_total_relation_size` over the market's tables after VACUUM. Both after a warm-up of 100
requests (30 in --quick), so the first pages of each table and index are not counted.
Baseline beside it: the signed receipt envelope's own size in JSON, the one thing that must
be kept.
"""

from __future__ import annotations

import argparse
import sqlite3
import tempfile
from contextlib import closing
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from benchmarks._data import Party, fill_real
from market.addresses import checksum_address
from market.db import create_engine, make_session_factory, migrate, session_scope
from market.ledger import service as ledger
from market.models import Base
from protocol.keys import signing_key_from_seed
from protocol.messages import Domain

TARGET_BYTES = 1024
DOMAIN = Domain(chain_id=31337, settlement_contract="0x5FbDB2315678afecb367f032d93F642f64180aa3")
BUYERS = [checksum_address(f"0x{0xB0 + i:040x}") for i in range(10)]
PROVIDERS = [
    Party(
        checksum_address(f"0x{0xA0 + i:040x}"), signing_key_from_seed("0x" + f"{0x10 + i:02x}" * 32)
    )
    for i in range(10)
]


def _fund(sessions: sessionmaker[Session]) -> None:
    with session_scope(sessions) as session:
        for n, buyer in enumerate(BUYERS):
            ledger.credit_deposit(session, buyer, 10**15, "0x" + f"{n + 1:064x}", 0)


def _envelope_bytes(sessions: sessionmaker[Session]) -> float:
    with session_scope(sessions) as session:
        avg = session.execute(text("SELECT AVG(LENGTH(envelope)) FROM receipts")).scalar_one()
    return float(avg)


def _by_object(path: Path) -> dict[str, int]:
    """Bytes of each table and index in use (SQLite's dbstat)."""
    with closing(sqlite3.connect(path)) as conn:
        rows = conn.execute("SELECT name, SUM(pgsize - unused) FROM dbstat GROUP BY name")
        return {str(name): int(size) for name, size in rows}


def sqlite_bytes(count: int, warmup: int, detail: bool) -> tuple[float, float]:
    """(bytes per request, envelope bytes) on a fresh SQLite file; `detail` prints the
    growth of each table and index, per request."""
    with tempfile.TemporaryDirectory(prefix="bench-storage-") as tmp:
        path = Path(tmp) / "market.sqlite3"
        url = f"sqlite:///{path}"
        migrate(url)
        engine = create_engine(url)
        sessions = make_session_factory(engine)
        _fund(sessions)
        fill_real(sessions, warmup, BUYERS, PROVIDERS, DOMAIN)

        def used() -> int:
            engine.dispose()
            with closing(sqlite3.connect(path)) as conn:
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                pages = conn.execute("PRAGMA page_count").fetchone()[0]
                free = conn.execute("PRAGMA freelist_count").fetchone()[0]
                size = conn.execute("PRAGMA page_size").fetchone()[0]
            return int((pages - free) * size)

        before = used()
        objects = _by_object(path)
        fill_real(sessions, count, BUYERS, PROVIDERS, DOMAIN)
        after = used()
        envelope = _envelope_bytes(sessions)
        engine.dispose()
        if detail:
            grown = {k: v - objects.get(k, 0) for k, v in _by_object(path).items()}
            top = sorted(grown.items(), key=lambda kv: -kv[1])[:8]
            print("SQLite, payload bytes per request by table/index (largest first):")
            print("  " + ", ".join(f"{name} {size / count:.0f}" for name, size in top))
    return (after - before) / count, envelope


def postgres_bytes(count: int, warmup: int) -> tuple[float, float] | str:
    """(bytes per request, envelope bytes) on PostgreSQL, or why it could not run."""
    from tests.support.postgres import (
        PostgresUnavailableError,
        create_database,
        drop_database,
        start_cluster,
    )

    try:
        cluster = start_cluster()
    except PostgresUnavailableError as exc:
        return f"PostgreSQL not available: {exc}"
    try:
        url = create_database(cluster.url)
        migrate(url)
        engine = create_engine(url)
        sessions = make_session_factory(engine)
        tables = [t.name for t in Base.metadata.sorted_tables]
        _fund(sessions)
        fill_real(sessions, warmup, BUYERS, PROVIDERS, DOMAIN)

        def used() -> int:
            with engine.connect() as conn:
                conn = conn.execution_options(isolation_level="AUTOCOMMIT")
                conn.execute(text("VACUUM ANALYZE"))
                total = 0
                for name in tables:
                    query = text("SELECT pg_total_relation_size(:t)")
                    total += int(conn.execute(query, {"t": name}).scalar_one())
            return total

        before = used()
        fill_real(sessions, count, BUYERS, PROVIDERS, DOMAIN)
        after = used()
        envelope = _envelope_bytes(sessions)
        engine.dispose()
        drop_database(cluster.url, url)
    finally:
        cluster.stop()
    return (after - before) / count, envelope


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Prints the table; returns the figures."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer requests, SQLite only (CI)")
    args = parser.parse_args(argv)
    count, warmup = (100, 30) if args.quick else (1_000, 100)
    print(f"\n== storage: database bytes per served request ({count} requests after {warmup}) ==")
    rows: list[tuple[str, tuple[float, float] | str]] = [
        ("SQLite", sqlite_bytes(count, warmup, not args.quick))
    ]
    if not args.quick:
        rows.append(("PostgreSQL", postgres_bytes(count, warmup)))
    print(f"{'database':<12}{'bytes/request':>15}{'envelope bytes':>16}{'ratio':>8}  target")
    out: dict[str, Any] = {}
    for name, result in rows:
        if isinstance(result, str):
            print(f"{name:<12}{result}")
            continue
        per, envelope = result
        ok = "MET" if per < TARGET_BYTES else "MISSED"
        print(f"{name:<12}{per:>15.0f}{envelope:>16.0f}{per / envelope:>8.2f}  < 1 KB {ok}")
        out[name] = per
    return out


if __name__ == "__main__":
    main()
