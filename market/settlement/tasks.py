"""Background work of the settlement package: the deposit watcher, the receipt-check pass,
epoch closing, and the reconciliation of the ledger with the chain.

Each task owns its transactions (one per watcher round, three per epoch close and one per
settlement sent: see `market.settlement.service`), takes no objects, and can run twice, or
twice at once, without harm. The Celery worker (`market.worker`) and, in the embedded mode,
the API process (`embedded_schedule`) call them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from functools import partial

from sqlalchemy.orm import Session, sessionmaker

from market.background import Periodic
from market.chain.service import MarketChain
from market.config import Settings
from market.db import session_scope
from market.jobs.tasks import RELEASE_INTERVAL_S, release_orphaned_jobs
from market.reviews import receipts
from market.runtime import Runtime
from market.settlement import service
from market.settlement.batch_size import party_cap
from market.settlement.models import ChainReconciliation, EpochStatus
from market.settlement.reconcile import Reconciliation, reconcile
from market.settlement.repository import SettlementRepository
from protocol.chain.connection import is_embedded
from protocol.chain.errors import EpochAlreadySettled, InsufficientEscrow
from protocol.chain.transactor import SentTransaction

log = logging.getLogger(__name__)

WATCH_INTERVAL_S = 2.0
"""How often the deposit watcher looks for new confirmed blocks."""

CONFIRMATION_WAIT_S = 120.0
"""How long a close waits for the blocks that must bury its settlement before booking it."""
CONFIRMATION_POLL_S = 1.0

MAX_EPOCHS_PER_CLOSE = 20
"""Full epochs one close settles back to back before it leaves the rest to the next."""

RECONCILE_INTERVAL_S = 300.0
"""How often the ledger is checked against the chain."""
RECONCILE_DETAIL = 50
"""Differences kept in a stored check's `detail` (its count keeps them all)."""


@dataclass(frozen=True)
class TaskContext:
    """What the settlement tasks need: the settings, database sessions and the chain."""

    settings: Settings
    sessions: sessionmaker[Session]
    chain: MarketChain

    @classmethod
    def of(cls, runtime: Runtime) -> TaskContext:
        """The context of the API's runtime."""
        return cls(settings=runtime.settings, sessions=runtime.sessions, chain=runtime.chain)


def watch_deposits(ctx: TaskContext) -> int:
    """Books confirmed deposits, withdrawals (of escrow, earnings and fees) and key rotations
    up to the confirmed head (or to a payout that waits for its settlement to be booked);
    returns how many events it booked. One transaction per round of blocks, so progress
    survives a crash."""
    booked = 0
    while True:
        with session_scope(ctx.sessions) as session:
            round_ = service.watch_chain(session, ctx.chain.client, ctx.settings.confirmations)
        booked += round_.events
        if round_.caught_up:
            return booked


def close_epoch(ctx: TaskContext) -> int | None:
    """Settles the open epoch, opening one over the unassigned receipts if none is open, and
    goes on while the epochs it settles are full (`market.settlement.batch_size`), at most
    `MAX_EPOCHS_PER_CLOSE` of them.

    Returns the last epoch number settled (or found settled), None if there was nothing to
    settle or a recent submission is still in flight."""
    cap = party_cap(ctx.settings.epoch_max_parties, ctx.chain.client.block_gas_limit())
    last = None
    for _ in range(MAX_EPOCHS_PER_CLOSE):
        number, parties = _close_one(ctx, cap)
        if number is None:
            break
        last = number
        if parties < cap - 1:  # a capped epoch leaves at most one place free
            break
    return last


def _close_one(ctx: TaskContext, cap: int, *, rebuilt: bool = False) -> tuple[int | None, int]:
    """Settles one epoch: its number (None as in `close_epoch`) and how many parties its
    batch named (0 if none was sent). An epoch the chain refuses because a buyer's escrow no
    longer covers its debit is discarded and built again at once, without that buyer
    (`service.discard_epoch`; `rebuilt`: this is that second try, which is not retried)."""
    client, operator = ctx.chain.client, ctx.chain.operator
    with session_scope(ctx.sessions) as session:
        epoch = service.open_epoch(session, client, ctx.settings.review_hold_kinds, cap)
        if epoch is None:
            return None, 0
        number = epoch.number
    confirmations = settlement_confirmations(ctx)
    with session_scope(ctx.sessions) as session:
        batch = service.begin_submission(
            session, client, number, ctx.settings.reward_pool_per_epoch, confirmations
        )
        if batch is None:
            settled = SettlementRepository(session).get_epoch(number)
            done = settled is not None and settled.status is EpochStatus.SETTLED
            return (number if done else None), 0
    tx_hash: str | None = None
    block: int | None = None
    try:
        receipt = client.settle_epoch(operator, batch, partial(_record_sent, ctx, number))
        tx_hash = "0x" + bytes(receipt["transactionHash"]).hex()
        block = int(receipt["blockNumber"])
    except EpochAlreadySettled:
        log.warning("epoch %d was already settled on-chain; checking its root", number)
    except InsufficientEscrow as exc:
        log.warning("epoch %d refused by the chain (%s); it is built anew", number, exc)
        with session_scope(ctx.sessions) as session:
            service.discard_epoch(session, client, number)
        return _close_one(ctx, cap, rebuilt=True) if not rebuilt else (None, 0)
    if not _record_when_confirmed(ctx, number, tx_hash, block, confirmations):
        return None, 0
    return number, len(batch.debits) + len(batch.credits)


def _record_sent(ctx: TaskContext, number: int, sent: SentTransaction) -> None:
    """Commits on epoch `number` the settlement transaction just sent, before the wait for
    it (`service.record_sent`)."""
    with session_scope(ctx.sessions) as session:
        service.record_sent(session, number, sent)


def settlement_confirmations(ctx: TaskContext) -> int:
    """Blocks that must bury a settlement before the ledger books it: the deposits'
    `confirmations`, or none on the in-process chain, which cannot reorganise."""
    return 0 if is_embedded(ctx.chain.client.w3) else ctx.settings.confirmations


def _record_when_confirmed(
    ctx: TaskContext, number: int, tx_hash: str | None, block: int | None, confirmations: int
) -> bool:
    """Books epoch `number` once `confirmations` blocks bury its settlement, waiting up to
    `CONFIRMATION_WAIT_S`; False if they did not come in time (the next close books it)."""
    deadline = time.monotonic() + CONFIRMATION_WAIT_S
    while True:
        with session_scope(ctx.sessions) as session:
            epoch = service.record_settlement(
                session, ctx.chain.client, number, tx_hash, block, confirmations
            )
            if epoch.status is EpochStatus.SETTLED:
                return True
        if time.monotonic() >= deadline:
            log.info(
                "epoch %d is settled on-chain; booked once %d blocks bury it", number, confirmations
            )
            return False
        time.sleep(CONFIRMATION_POLL_S)


def check_receipts(ctx: TaskContext) -> int:
    """Checks the claims of the receipts not checked yet (`market.reviews.receipts`), in
    one transaction; returns how many it checked. Epoch close does the same before it
    assigns receipts; running it between closes keeps that pass short."""
    with session_scope(ctx.sessions) as session:
        # One pass at a time, and never beside an epoch close or a void (same cursor).
        SettlementRepository(session).lock_cursor(service.EPOCH_CURSOR, 0)
        round_ = receipts.check_receipts(session, ctx.settings.review_hold_kinds)
    if round_.failed or round_.flagged:
        log.warning(
            "receipt checks: %d checked, %d failed (payment held), %d flagged",
            round_.checked,
            round_.failed,
            round_.flagged,
        )
    return round_.checked


def reconcile_chain(ctx: TaskContext) -> Reconciliation | None:
    """Checks the ledger against the chain (`market.settlement.reconcile`) and keeps the
    result; logs an error naming what disagrees. None if the watcher has booked nothing."""
    with session_scope(ctx.sessions) as session:
        result = reconcile(session, ctx.chain.client)
    if result is None:
        return None
    detail = [
        {"what": d.what, "expected": str(d.expected), "booked": str(d.booked)}
        for d in result.differences[:RECONCILE_DETAIL]
    ]
    if result.ledger_error is not None:
        detail.append({"what": "ledger books", "error": result.ledger_error})
    with session_scope(ctx.sessions) as session:
        session.add(
            ChainReconciliation(
                block=result.block,
                chain_epoch=result.chain_epoch,
                ledger_epoch=result.ledger_epoch,
                accounts_compared=result.accounts_compared,
                differences=result.count,
                detail=json.dumps(detail),
            )
        )
    if not result.agrees:
        log.error(
            "the ledger disagrees with the chain at block %d on %d figures: %s",
            result.block,
            result.count,
            detail[:5],
        )
    return result


def embedded_schedule(runtime: Runtime) -> list[Periodic]:
    """The periodic tasks the API runs itself in the embedded mode (no worker, no beat)."""
    ctx = TaskContext.of(runtime)

    async def watch(_: Runtime) -> None:
        await asyncio.to_thread(watch_deposits, ctx)

    async def close(_: Runtime) -> None:
        await asyncio.to_thread(close_epoch, ctx)

    async def check(_: Runtime) -> None:
        await asyncio.to_thread(check_receipts, ctx)

    async def orphans(_: Runtime) -> None:
        await asyncio.to_thread(release_orphaned_jobs, ctx.sessions, ctx.settings)

    async def check_books(_: Runtime) -> None:
        await asyncio.to_thread(reconcile_chain, ctx)

    return [
        Periodic("watch_deposits", WATCH_INTERVAL_S, watch),
        Periodic("check_receipts", receipts.INTERVAL_S, check),
        Periodic("release_orphaned_jobs", RELEASE_INTERVAL_S, orphans),
        Periodic("close_epoch", float(runtime.settings.epoch_seconds), close, wait_first=True),
        Periodic("reconcile_chain", RECONCILE_INTERVAL_S, check_books, wait_first=True),
    ]
