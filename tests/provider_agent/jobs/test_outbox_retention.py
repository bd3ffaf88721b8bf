"""`run.retention_days` in the receipt outbox: sealed days older than that are deleted, after
each receipt sync; an unsealed day, the legacy file and today's file never are."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx

from protocol.keys import ProviderIdentity
from provider_agent.jobs.outbox import ReceiptOutbox
from provider_agent.market_client import MarketClient
from provider_agent.receipt_sync import sync_receipts
from tests.provider_agent.jobs.harness import DOMAIN
from tests.provider_agent.jobs.test_outbox import DAY_TWO, Clock, envelope, ids

DAY_S = 86_400
TODAY = DAY_TWO  # 2026-01-01
DAYS = {  # receipt number -> days before today it was appended
    1: 12,  # 2025-12-20, answered: deleted
    2: 11,  # 2025-12-21, unanswered: kept
    3: 4,  # 2025-12-28, answered, one day beyond the retention: deleted
    4: 3,  # 2025-12-29, answered, just within it: kept
    5: 0,  # 2026-01-01, today: kept
}
RETENTION_DAYS = 3


def days_dir_names(data_dir: Path) -> list[str]:
    return sorted(path.name for path in (data_dir / "receipts").iterdir())


def outbox_over_days(data_dir: Path) -> ReceiptOutbox:
    """An outbox with one receipt a day (`DAYS`) and a legacy file (receipt 0), the clock on
    `TODAY`."""
    (data_dir / "receipts.jsonl").write_text(envelope(0).model_dump_json() + "\n")
    clock = Clock(TODAY)
    outbox = ReceiptOutbox(data_dir, clock=clock)
    for n, days in DAYS.items():
        clock.now = TODAY - days * DAY_S
        outbox.add(envelope(n))
    clock.now = TODAY
    return outbox


def test_sealed_days_older_than_the_retention_are_deleted_with_their_markers(
    tmp_path: Path,
) -> None:
    outbox = outbox_over_days(tmp_path)
    outbox.mark_sent([f"{n:032x}" for n in (0, 1, 3, 4, 5)])
    outbox.seal_answered()
    (tmp_path / "receipts" / "2025-12-10.jsonl.answered").touch()  # its file already gone

    removed = outbox.remove_sealed(RETENTION_DAYS)

    days = tmp_path / "receipts"
    assert removed == [days / "2025-12-20.jsonl", days / "2025-12-28.jsonl"]
    assert days_dir_names(tmp_path) == [
        "2025-12-21.jsonl",  # unsealed
        "2025-12-29.jsonl",
        "2025-12-29.jsonl.answered",
        "2026-01-01.jsonl",  # today's, never sealed
    ]
    assert ids(outbox.all()) == [0, 2, 4, 5]  # the sealed legacy file is kept too
    assert ids(outbox.unsent()) == [2]
    assert outbox.remove_sealed(RETENTION_DAYS) == []


def test_a_retention_of_one_day_keeps_yesterday_and_today(tmp_path: Path) -> None:
    outbox = outbox_over_days(tmp_path)
    outbox.mark_sent([f"{n:032x}" for n in DAYS])
    outbox.seal_answered()
    # a seal on today's file (another instance sealed it before the clock went forward)
    (tmp_path / "receipts" / "2026-01-01.jsonl.answered").touch()

    outbox.remove_sealed(1)

    assert ids(outbox.all()) == [0, 5]
    assert ReceiptOutbox(tmp_path, clock=Clock(TODAY + DAY_S)).remove_sealed(1) == []
    assert ReceiptOutbox(tmp_path, clock=Clock(TODAY + 2 * DAY_S)).remove_sealed(1) == [
        tmp_path / "receipts" / "2026-01-01.jsonl"
    ]


def recording_market() -> MarketClient:
    """A market that answers every receipt `recorded` (final)."""

    def answer(request: httpx.Request) -> httpx.Response:
        posted = json.loads(request.content)["receipts"]
        answers = [
            {"job_id": r["message"]["job_id"], "state": "recorded", "final": True, "detail": None}
            for r in posted
        ]
        return httpx.Response(200, json={"receipts": answers})

    http = httpx.AsyncClient(transport=httpx.MockTransport(answer))
    return MarketClient("http://market.test", ProviderIdentity.generate(), DOMAIN, http)


def test_the_receipt_sync_deletes_old_sealed_days_only_with_a_retention(tmp_path: Path) -> None:
    outbox = outbox_over_days(tmp_path)
    market = recording_market()
    everything = days_dir_names(tmp_path)

    asyncio.run(sync_receipts(outbox, market))  # no retention: everything sealed, nothing gone
    assert days_dir_names(tmp_path) == sorted(
        [*everything, *(f"{name}.answered" for name in everything[:-1])]
    )
    assert ids(outbox.all()) == [0, 1, 2, 3, 4, 5]

    asyncio.run(sync_receipts(outbox, market, retention_days=RETENTION_DAYS))
    assert ids(outbox.all()) == [0, 4, 5]
    assert days_dir_names(tmp_path) == [
        "2025-12-29.jsonl",
        "2025-12-29.jsonl.answered",
        "2026-01-01.jsonl",
    ]
