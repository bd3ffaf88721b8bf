"""Database bytes per receipt: what one served request leaves in the market's database.

    python -m benchmarks.storage [--quick]

N requests go through the request path's own functions (`benchmarks._data.fill_real`:
`open_job`, `check_receipt`, `complete_job`, with the routed offer's site as routing passes
it), spread over 10 buyers and 10 providers: the job row, the hold, the charge and release
transfers with their legs, the receipt row (the signed envelope's fields in columns, see
`market.jobs.receipt_codec`), and their indexes. Measured: growth of the SQLite file (pages in
use, after a WAL checkpoint), and on PostgreSQL (a throwaway cluster from
`tests/support/postgres.py`, if its binaries are installed) growth of the sum of
`pg_total_relation_size` over the market's tables after VACUUM. Both after a warm-up of 100
requests (30 in --quick), so the first pages of each table and index are not counted.

Two figures: bytes per receipt (the receipt tables, `receipts`, `receipt_domains` and
`energy_sites`, with their indexes; the target applies to it) and bytes per request (every
table: the receipt, the job and the ledger). Baseline beside them: the signed receipt
envelope's own size in JSON, as providers send it.
"""

from __future__ import annotations

import argparse
import sqlite3
import tempfile
from contextlib import closing
from pathlib import Path
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.orm import Session, sessionmaker

from benchmarks._data import Party, fill_real
from market.addresses import checksum_address
from market.db import create_engine, make_session_factory, migrate, session_scope
from market.energy.accounting import SiteProfile
from market.jobs.models import Receipt
from market.ledger import service as ledger
from market.models import Base
from market.providers.site import site_json
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
SITE = site_json(
    SiteProfile(
        region="DE",
        tariff_micro_per_kwh=250_000,
        tariff_currency="EUR",
        pue_profile="colocation",
        pue_milli=1_200,
        host_overhead_milli=1_400,
    )
)
"""The routed offer's site stored with each receipt (one offer site for all, as is typical)."""
RECEIPT_TABLES = ("receipts", "receipt_domains", "energy_sites")
"""The tables a receipt's storage is counted over (with their indexes)."""


def _fund(sessions: sessionmaker[Session]) -> None:
    with session_scope(sessions) as session:
        for n, buyer in enumerate(BUYERS):
            ledger.credit_deposit(session, buyer, 10**15, "0x" + f"{n + 1:064x}", 0)


def _envelope_bytes(sessions: sessionmaker[Session]) -> float:
    """Average size of the stored receipts' envelopes as JSON (rebuilt from the columns)."""
    with session_scope(sessions) as session:
        sizes = [len(r.envelope.encode()) for r in session.scalars(select(Receipt))]
    return sum(sizes) / len(sizes)


def _by_object(path: Path) -> dict[str, int]:
    """Bytes of each table and index in use (SQLite's dbstat)."""
    with closing(sqlite3.connect(path)) as conn:
        rows = conn.execute("SELECT name, SUM(pgsize - unused) FROM dbstat GROUP BY name")
        return {str(name): int(size) for name, size in rows}


def _receipt_objects(path: Path) -> set[str]:
    """The receipt tables and their indexes (SQLite's schema)."""
    with closing(sqlite3.connect(path)) as conn:
        rows = conn.execute("SELECT name, tbl_name FROM sqlite_master")
        return {str(name) for name, table in rows if table in RECEIPT_TABLES}


Figures = tuple[float, float, float]
"""Bytes per request, bytes per receipt (receipt tables), envelope JSON bytes."""


def sqlite_bytes(count: int, warmup: int, detail: bool) -> Figures:
    """`Figures` on a fresh SQLite file; `detail` prints the growth of each table and
    index, per request."""
    with tempfile.TemporaryDirectory(prefix="bench-storage-") as tmp:
        path = Path(tmp) / "market.sqlite3"
        url = f"sqlite:///{path}"
        migrate(url)
        engine = create_engine(url)
        sessions = make_session_factory(engine)
        _fund(sessions)
        fill_real(sessions, warmup, BUYERS, PROVIDERS, DOMAIN, SITE)

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
        fill_real(sessions, count, BUYERS, PROVIDERS, DOMAIN, SITE)
        after = used()
        envelope = _envelope_bytes(sessions)
        engine.dispose()
        grown = {k: v - objects.get(k, 0) for k, v in _by_object(path).items()}
        receipt = sum(grown.get(name, 0) for name in _receipt_objects(path))
        if detail:
            top = sorted(grown.items(), key=lambda kv: -kv[1])[:8]
            print("SQLite, payload bytes per request by table/index (largest first):")
            print("  " + ", ".join(f"{name} {size / count:.0f}" for name, size in top))
            mine = sorted((k, v) for k, v in grown.items() if k in _receipt_objects(path) and v)
            print("  receipt tables: " + ", ".join(f"{k} {v / count:.0f}" for k, v in mine))
    return (after - before) / count, receipt / count, envelope


def postgres_bytes(count: int, warmup: int) -> Figures | str:
    """`Figures` on PostgreSQL, or why it could not run."""
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
        fill_real(sessions, warmup, BUYERS, PROVIDERS, DOMAIN, SITE)

        def used() -> tuple[int, int]:
            """(all tables, receipt tables), with indexes and TOAST."""
            with engine.connect() as conn:
                conn = conn.execution_options(isolation_level="AUTOCOMMIT")
                conn.execute(text("VACUUM ANALYZE"))
                total = receipt = 0
                for name in tables:
                    query = text("SELECT pg_total_relation_size(:t)")
                    size = int(conn.execute(query, {"t": name}).scalar_one())
                    total += size
                    receipt += size if name in RECEIPT_TABLES else 0
            return total, receipt

        before = used()
        fill_real(sessions, count, BUYERS, PROVIDERS, DOMAIN, SITE)
        after = used()
        envelope = _envelope_bytes(sessions)
        engine.dispose()
        drop_database(cluster.url, url)
    finally:
        cluster.stop()
    return (after[0] - before[0]) / count, (after[1] - before[1]) / count, envelope


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Prints the table; returns the figures."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer requests, SQLite only (CI)")
    args = parser.parse_args(argv)
    count, warmup = (100, 30) if args.quick else (1_000, 100)
    print(f"\n== storage: database bytes per served request ({count} requests after {warmup}) ==")
    rows: list[tuple[str, Figures | str]] = [
        ("SQLite", sqlite_bytes(count, warmup, not args.quick))
    ]
    if not args.quick:
        rows.append(("PostgreSQL", postgres_bytes(count, warmup)))
    print(
        f"{'database':<12}{'bytes/receipt':>15}{'bytes/request':>15}{'envelope bytes':>16}"
        f"{'ratio':>8}  target (bytes/receipt)"
    )
    out: dict[str, Any] = {}
    for name, result in rows:
        if isinstance(result, str):
            print(f"{name:<12}{result}")
            continue
        per, receipt, envelope = result
        ok = "MET" if receipt < TARGET_BYTES else "MISSED"
        print(
            f"{name:<12}{receipt:>15.0f}{per:>15.0f}{envelope:>16.0f}{receipt / envelope:>8.2f}"
            f"  < 1 KB {ok}"
        )
        out[name] = {"receipt": receipt, "request": per}
    return out


if __name__ == "__main__":
    main()
