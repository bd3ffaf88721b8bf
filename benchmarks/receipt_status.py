"""What the agents' receipt sync costs: the market's answer per receipt, the outbox's scan.

    python -m benchmarks.receipt_status [--quick]

1. **Market.** N requests go through the request path's own functions
   (`benchmarks._data.fill_real`) on a migrated SQLite file, 10 buyers x 10 providers, the
   providers registered. The agents then ask about every receipt, 200 a batch, as
   `provider_agent.receipt_sync` does: `market.providers.receipts.receipt_states` in one
   transaction per batch, over the envelopes as agents store and post them (parsed JSON).
   Every answer is `recorded`, the usual one. Baseline beside it: PyNaCl's
   `VerifyKey.verify` over the same receipts' signing bytes, already decoded (what checking
   each signature again would cost at least). Rounds alternate; the best of each counts.
2. **Agent.** An outbox holding N receipts of a past day, all answered: one scan for the
   unanswered ones (`ReceiptOutbox.count_unsent`) before the day is sealed, and after
   (`seal_answered`).

A report: no target applies.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nacl.signing import VerifyKey
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from benchmarks._data import fill_real
from benchmarks.storage import BUYERS, DOMAIN, PROVIDERS, _fund
from market.db import create_engine, make_session_factory, migrate, session_scope
from market.jobs.models import Receipt
from market.providers.models import Provider
from market.providers.receipts import receipt_states
from protocol.keys import public_key_hex
from protocol.messages import Receipt as SignedReceipt
from protocol.messages import Signed, parse_signed, signing_bytes
from provider_agent.jobs.outbox import ReceiptOutbox

BATCH = 200
DAY_S = 86_400


def _register(sessions: sessionmaker[Session]) -> None:
    with session_scope(sessions) as session:
        for party in PROVIDERS:
            public_key = public_key_hex(party.key)
            session.add(
                Provider(address=party.address, public_key=public_key, registration_issued_at_ms=1)
            )


def _stored(sessions: sessionmaker[Session]) -> list[str]:
    """Every stored receipt's envelope as JSON, as its agent keeps it."""
    with session_scope(sessions) as session:
        return [row.envelope for row in session.scalars(select(Receipt))]


def _best_us(rounds: int, runs: list[tuple[str, Callable[[], int]]]) -> dict[str, float]:
    """Microseconds per item of each run's best round; runs alternate within each round."""
    best = {name: float("inf") for name, _ in runs}
    for _ in range(rounds):
        for name, run in runs:
            start = time.process_time()
            items = run()
            best[name] = min(best[name], (time.process_time() - start) / items * 1e6)
    return best


def market_figures(count: int, rounds: int) -> tuple[dict[str, float], Signed[SignedReceipt]]:
    """Microseconds of CPU per receipt (the status answer, a raw signature check), and one of
    the receipts."""
    with tempfile.TemporaryDirectory(prefix="bench-receipt-status-") as tmp:
        url = f"sqlite:///{Path(tmp) / 'market.sqlite3'}"
        migrate(url)
        engine = create_engine(url)
        sessions = make_session_factory(engine)
        _fund(sessions)
        _register(sessions)
        fill_real(sessions, count, BUYERS, PROVIDERS, DOMAIN)
        posted: list[Any] = [json.loads(envelope) for envelope in _stored(sessions)]
        envelopes = [parse_signed(json.dumps(item), SignedReceipt) for item in posted]
        raw = [
            (
                VerifyKey(bytes.fromhex(e.signer[2:])),
                signing_bytes(e.message),
                bytes.fromhex(e.signature[2:]),
            )
            for e in envelopes
        ]

        def status() -> int:
            for start in range(0, len(posted), BATCH):
                with session_scope(sessions) as session:
                    answer = receipt_states(session, posted[start : start + BATCH], DOMAIN)
                    assert all(a.state == "recorded" for a in answer.receipts)
            return len(posted)

        def verify() -> int:
            for key, message, signature in raw:
                key.verify(message, signature)
            return len(raw)

        try:
            return _best_us(rounds, [("status", status), ("verify", verify)]), envelopes[0]
        finally:
            engine.dispose()


def agent_figures(count: int, envelope: Signed[SignedReceipt]) -> dict[str, float]:
    """Seconds of CPU for one scan of `count` answered receipts, before and after sealing."""
    template = envelope.model_dump_json()
    job_id = envelope.message.job_id
    with tempfile.TemporaryDirectory(prefix="bench-outbox-") as tmp:
        now = [time.time() - DAY_S]
        outbox = ReceiptOutbox(Path(tmp), clock=lambda: now[0])
        outbox.add(envelope)  # creates the day file; rewritten below
        (day_file,) = outbox.paths()
        ids = [f"{n:032x}" for n in range(count)]
        outbox.close()
        with day_file.open("w") as out:  # the same receipt under other job ids: same size
            out.writelines(template.replace(job_id, i, 1) + "\n" for i in ids)
        outbox.mark_sent(ids)
        now[0] += DAY_S
        figures = {}
        for name in ("before", "sealing", "after"):
            start = time.process_time()
            if name == "sealing":
                assert outbox.seal_answered() == [day_file]
            else:
                assert outbox.count_unsent() == 0
            figures[name] = time.process_time() - start
        return figures


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Prints both tables; returns the figures."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer receipts (CI)")
    args = parser.parse_args(argv)
    count, rounds, scanned = (400, 3, 20_000) if args.quick else (2_000, 5, 100_000)
    print("\n== receipt status: what the agents' receipt sync costs ==")
    market, envelope = market_figures(count, rounds)
    print(f"market: {count} recorded receipts asked about in batches of {BATCH}, best of {rounds}")
    print(f"{'path':<52}{'us each':>10}")
    print(f"{'PyNaCl VerifyKey.verify (baseline)':<52}{market['verify']:>10.1f}")
    print(f"{'market.providers.receipts.receipt_states':<52}{market['status']:>10.1f}")
    print(f"status answer / raw verify: {market['status'] / market['verify']:.2f}")
    agent = agent_figures(scanned, envelope)
    print(f"agent: one scan of an outbox day of {scanned:,} answered receipts (CPU s)")
    print(f"  before sealing {agent['before']:.3f}   sealing {agent['sealing']:.3f}", end="")
    print(f"   after sealing {agent['after']:.4f}")
    return {**market, **{f"scan_{k}": v for k, v in agent.items()}}


if __name__ == "__main__":
    main()
