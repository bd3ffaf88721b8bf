"""Reconciles the receipt outbox with the market.

Every receipt the agent signs is in its outbox (`provider_agent.jobs.outbox`) and travels to
the market inside the job's response, so the agent cannot tell by itself whether the market
got it. `sync_receipts` posts the outbox's unanswered receipts to the market in batches
(`POST /providers/receipts/status`, which only reads) and marks each one the market gave a
final answer for; a job still open (`in_flight`) is asked about again next time. Answers
that mean the receipt will not be paid (`closed`, `differs`, `unknown`, `refused`) are also
appended to `receipts-unpaid.jsonl` and logged, so the provider knows what went unpaid and
why. Past days whose receipts were all answered are then sealed, so later syncs skip them,
and with `run.retention_days` set, sealed days older than that are deleted.
`provider-agent run` syncs at start and then every `run.receipt_sync_interval_s`.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from itertools import islice

from protocol.messages import Receipt, Signed
from provider_agent.jobs.outbox import ReceiptOutbox
from provider_agent.market_client import MarketClient, MarketError

log = logging.getLogger(__name__)

BATCH = 200
"""Receipts per request (the market takes up to 500)."""
PAID = frozenset({"recorded"})


@dataclass
class SyncResult:
    """How many receipts got each state; `error` if the market stopped answering."""

    states: Counter[str] = field(default_factory=Counter)
    error: str | None = None


async def _batches(
    envelopes: Iterator[Signed[Receipt]], size: int
) -> AsyncIterator[list[Signed[Receipt]]]:
    """The outbox is read in a worker thread: skipping a long run of answered receipts must
    not stall the job endpoint that shares the event loop."""
    while batch := await asyncio.to_thread(lambda: list(islice(envelopes, size))):
        yield batch


async def sync_receipts(
    outbox: ReceiptOutbox,
    market: MarketClient,
    *,
    batch: int = BATCH,
    retention_days: int | None = None,
) -> SyncResult:
    """Ask the market about every unanswered receipt; how many got each state.

    Stops at the first batch the market does not answer (the rest wait for the next sync);
    what was answered before it stays marked. Sealed days more than `retention_days` old
    are then deleted (`None`: none), whether the market answered or not.
    """
    result = SyncResult()
    async for envelopes in _batches(outbox.unsent(), batch):
        try:
            answers = await market.receipt_states(envelopes)
        except MarketError as exc:
            log.warning("receipt sync stopped: %s", exc)
            result.error = str(exc)
            break
        final, unpaid = [], []
        for envelope, answer in zip(envelopes, answers, strict=True):
            job_id, state = envelope.message.job_id, str(answer.get("state"))
            result.states[state] += 1
            if not answer.get("final"):
                continue
            final.append(job_id)
            if state not in PAID:
                detail = answer.get("detail")
                unpaid.append({"job_id": job_id, "state": state, "detail": detail})
                log.warning("the market will not pay job %s: %s (%s)", job_id, state, detail)
        outbox.record_unpaid(unpaid)
        outbox.mark_sent(final)
    if result.error is None:
        await asyncio.to_thread(outbox.seal_answered)
    if retention_days is not None:
        await asyncio.to_thread(outbox.remove_sealed, retention_days)
    return result
