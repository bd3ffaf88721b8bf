"""Settlement: epochs of verified receipts, settled on-chain in one batch, with proofs.

Closing an epoch takes three short transactions, each starting by locking the `epochs` cursor
row so that concurrent closers take turns (`market.settlement.tasks.close_epoch` runs them):

1. `open_epoch`: the unsettled epoch if there is one, else a new one (number: the chain's last
   settled epoch + 1). It first checks the claims of every receipt not checked yet
   (`market.reviews.receipts`), then takes every receipt in no epoch that is settleable:
   checked, not void, and not of a provider whose payment is held by an open review
   (`market.reviews`), nor beyond what the chain surely still holds of its buyer's escrow
   (`market.settlement.coverage`: a buyer it cannot cover whole settles its oldest receipts
   that fit); the others stay in no epoch, their charges unsettled in the ledger. When the
   receipts name more buyers and providers than one batch may
   (`market.settlement.batch_size`), it takes the pairs with the oldest receipts up to that
   many, and the rest go into the next epoch.
   Leaf indexes follow the receipts' hashes; the receipts are then streamed in leaf order to
   build the Merkle tree and the per-buyer debits (sum of charges) and per-provider credits
   (sum of charge - fee).
2. `begin_submission`: if the chain already settled the epoch (a crash after sending), it is
   recorded as settled without sending anything; else it is marked `submitted` and its batch
   returned for the operator to send.
   If the chain refuses the batch with `InsufficientEscrow` (a buyer withdrew in between),
   `discard_epoch` puts its receipts back in no epoch and the close builds it again.
   Each send the node accepts (a replacement of a waiting one at higher fees included) is
   recorded on the epoch at once, in a transaction of its own, before the wait for it to be
   mined (`record_sent`): a submitted epoch names the transaction it waits on, after a crash
   too, and `list_epochs` / `get_epoch` show it (`pending_tx`).
3. `record_settlement`: checks the root the chain recorded against ours (a different root
   raises `EpochRootMismatchError`), books the settlement in the ledger and marks the epoch
   settled, with the transaction that was mined (which may be a replacement of the one
   sent first), in one transaction.

Ledger at settlement (transfer kind `settle`, key `settle:<epoch>`): the charges were booked
when each receipt was verified (buyer held -> provider earned + protocol fees). Settlement
moves, for each provider, its epoch credit from `provider:<addr>:earned` (earned, unsettled)
to `provider:<addr>:settled` (on-chain earnings), and the epoch fee from `protocol:fees` to
`protocol:fees_settled` (the contract's accrued fees). Buyers' accounts do not move: their
held balance was reduced at charge time, and the contract's escrow catches up now. Hence after
settlement, on-chain `escrow(b)` = available + held + withdrawing of b, and `earnings(p)` =
settled of p, to the base unit (`market.settlement.reconcile` checks this and more).

Withdrawals (the chain watcher): a `WithdrawalRequested` moves the requested amount (the
contract keeps one pending request per buyer, the newest replacing the older) from
`buyer:<addr>:available` to `buyer:<addr>:withdrawing`, so it can no longer be held for jobs;
`Withdrawn` moves it from `withdrawing` to the chain's contra account. Both are `withdrawal`
transfers, idempotent on the log's (tx_hash, log_index). What a `Withdrawn` takes beyond
`withdrawing` and `available` (escrow the market had charged and not yet settled) goes to
`chain:<buyer>:overdrawn`, which the buyer's next deposits repay before anything else.
An `EarningsWithdrawn` moves the amount from `provider:<addr>:settled`, a `FeesWithdrawn`
from `protocol:fees_settled`, to the chain's contra account (`withdrawal` transfers keyed
`payout:<tx>:<log>`), so the ledger follows what the contract still holds.

Key rotations (the chain watcher): a `ProviderKeyRotated` voids the provider's old Ed25519 key
at the market at once, unless it already registered with a newer one
(`market.providers.service.key_rotated`).
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, and_, func, or_, select, update
from sqlalchemy.orm import Session

from market.addresses import checksum_address
from market.buyers.service import get_or_create_buyer
from market.db import utcnow
from market.jobs.models import Receipt
from market.ledger.models import OwnerKind, TransferKind
from market.ledger.repository import AccountRef, LedgerRepository
from market.ledger.service import (
    CHAIN_ESCROW,
    PROTOCOL_FEES,
    Leg,
    balance,
    buyer_available,
    credit_deposit,
    post_transfer,
    provider_earned,
)
from market.providers.service import key_rotated
from market.reviews.models import ReceiptCheckStatus
from market.reviews.receipts import check_receipts
from market.reviews.service import DEFAULT_HOLD_KINDS, open_reviews
from market.rewards.service import decide_rewards, record_forfeits
from market.settlement.batch_size import select_parties
from market.settlement.coverage import shortfalls
from market.settlement.errors import (
    EpochNotFoundError,
    EpochNotOnChainError,
    EpochRootMismatchError,
    ReceiptNotSettledError,
)
from market.settlement.models import Epoch, EpochLine, EpochStatus, LineKind
from market.settlement.repository import SettlementRepository
from market.settlement.schemas import (
    EpochDetail,
    EpochRead,
    LineRead,
    PendingTransaction,
    ReceiptProof,
    RewardWeightRead,
)
from protocol.chain.settlement import ChainEvent, Credit, Debit, EpochBatch, SettlementClient
from protocol.chain.transactor import SentTransaction
from protocol.merkle import MerkleTree

log = logging.getLogger(__name__)

EPOCH_CURSOR = "epochs"
CHAIN_CURSOR = "chain_events"
WATCH_BLOCKS = 2_000
"""Blocks scanned per watcher transaction."""

RESUBMIT_AFTER = timedelta(minutes=2)
"""A `submitted` epoch not on-chain after this long is sent again (the sender died)."""

PROTOCOL_SETTLED_FEES = AccountRef(OwnerKind.PROTOCOL, None, "fees_settled")
"""Fees the contract has accrued for the protocol (settled, not withdrawn)."""


def provider_settled(provider: str) -> AccountRef:
    """The provider's settled earnings, which the contract holds for it."""
    return AccountRef(OwnerKind.PROVIDER, checksum_address(provider), "settled")


def buyer_withdrawing(buyer: str) -> AccountRef:
    """The buyer's escrow with a withdrawal pending on-chain: not available for holds."""
    return AccountRef(OwnerKind.BUYER, checksum_address(buyer), "withdrawing")


def buyer_overdrawn(buyer: str) -> AccountRef:
    """Escrow the buyer took from the contract that the market had charged and not yet
    settled (negative: what the buyer owes; `market.settlement.coverage`). A chain-side
    contra account, so it may go below zero; the buyer's next deposits pay it back."""
    return AccountRef(OwnerKind.CHAIN, checksum_address(buyer), "overdrawn")


def hash_bytes(receipt_hash: str) -> bytes:
    """The 32 bytes of a stored `0x`-hex receipt hash."""
    raw = bytes.fromhex(receipt_hash.removeprefix("0x"))
    if len(raw) != 32:
        raise ValueError(f"receipt hash {receipt_hash!r} is not 32 bytes")
    return raw


def _hex(raw: bytes) -> str:
    return "0x" + raw.hex()


# -- closing an epoch ---------------------------------------------------------------------


Cutoff = tuple[datetime, str]
"""(verified_at, job_id) of a short buyer's newest receipt the chain covers."""


def _settleable(
    short: Mapping[str, Cutoff | None] | None = None,
    parties: tuple[set[str], set[str]] | None = None,
) -> list[ColumnElement[bool]]:
    """Receipts the next epoch takes: in no epoch, checked, not void, payment not held; of a
    buyer in `short` (`market.settlement.coverage`) only those up to its cutoff (none
    without one); and, when the epoch's parties are capped (`market.settlement.batch_size`),
    between the (buyers, providers) `parties`."""
    where = [
        Receipt.epoch.is_(None),
        Receipt.check_status.is_not(None),
        Receipt.check_status != ReceiptCheckStatus.VOID.value,
        Receipt.provider_address.not_in(open_reviews()),
    ]
    if short:
        covered = [
            and_(Receipt.buyer_address == buyer, _up_to(cutoff))
            for buyer, cutoff in short.items()
            if cutoff is not None
        ]
        where.append(or_(Receipt.buyer_address.not_in(list(short)), *covered))
    if parties is not None:
        buyers, providers = parties
        where.append(Receipt.buyer_address.in_(sorted(buyers)))
        where.append(Receipt.provider_address.in_(sorted(providers)))
    return where


def _up_to(cutoff: Cutoff) -> ColumnElement[bool]:
    """Receipts up to the cutoff, itself included, in (verified_at, job_id) order."""
    verified_at, job_id = cutoff
    return or_(
        Receipt.verified_at < verified_at,
        and_(Receipt.verified_at == verified_at, Receipt.job_id <= job_id),
    )


def _short_buyers(
    repo: SettlementRepository, client: SettlementClient, owed: dict[str, int]
) -> dict[str, Cutoff | None]:
    """The buyers whose whole debit the chain may not cover, with the cutoff of what it does."""
    short: dict[str, Cutoff | None] = {}
    for shortfall in shortfalls(client, owed):
        cutoff = repo.last_covered(_settleable(), shortfall.buyer, shortfall.covered)
        short[shortfall.buyer] = cutoff
        log.warning(
            "buyer %s: %d charged, the chain surely covers only %d; %s",
            shortfall.buyer,
            shortfall.debit,
            shortfall.covered,
            "its oldest receipts that fit settle" if cutoff else "left out of the epoch",
        )
    return short


def _assign(session: Session, number: int, where: list[ColumnElement[bool]]) -> None:
    """Puts every receipt matching `where` into epoch `number`, leaf indexes in receipt-hash
    order (one UPDATE ... FROM)."""
    leaf = func.row_number().over(order_by=(Receipt.receipt_hash, Receipt.job_id)) - 1
    ordered = (
        select(Receipt.job_id.label("job_id"), leaf.label("leaf")).where(*where).subquery("ordered")
    )
    session.execute(
        update(Receipt)
        .where(Receipt.job_id == ordered.c.job_id)
        .values(epoch=number, leaf_index=ordered.c.leaf)
        .execution_options(synchronize_session=False)
    )


def open_epoch(
    session: Session,
    client: SettlementClient,
    hold_kinds: Collection[str] = DEFAULT_HOLD_KINDS,
    max_parties: int | None = None,
) -> Epoch | None:
    """The epoch to settle next (see the module doc), or None if there is nothing to settle.

    `hold_kinds`: the kinds of failed receipt check that hold payment
    (`Settings.review_hold_kinds`); `max_parties`: the most buyers and providers the epoch
    may name together (`market.settlement.batch_size`; None: no limit)."""
    repo = SettlementRepository(session)
    cursor = repo.lock_cursor(EPOCH_CURSOR, 0)
    unsettled = repo.unsettled_epoch()
    if unsettled is not None:
        return unsettled
    check_receipts(session, hold_kinds)
    pairs = repo.pairs_where(_settleable())
    owed: dict[str, int] = {}
    for buyer, _, charged in pairs:
        owed[buyer] = owed.get(buyer, 0) + charged
    short = _short_buyers(repo, client, owed)
    unfunded = {buyer for buyer, cutoff in short.items() if cutoff is None}
    if unfunded >= owed.keys():  # nothing settleable, or no buyer the chain covers at all
        return None
    parties = None
    if max_parties is not None:
        funded = ((b, p) for b, p, _ in pairs if b not in unfunded)
        parties = select_parties(funded, max_parties)
        if parties is not None:
            log.info(
                "epoch capped at %d parties: %d buyers, %d providers; the rest follow",
                max_parties,
                len(parties[0]),
                len(parties[1]),
            )
    number = max(client.last_settled_epoch(), repo.last_epoch_number()) + 1
    _assign(session, number, _settleable(short, parties))

    hashes: list[bytes] = []
    debits: dict[str, int] = {}
    credits: dict[str, int] = {}
    fee = 0
    for receipt_hash, buyer, provider, charge, receipt_fee in repo.stream_epoch(number):
        hashes.append(hash_bytes(receipt_hash))
        debits[buyer] = debits.get(buyer, 0) + charge
        credits[provider] = credits.get(provider, 0) + charge - receipt_fee
        fee += receipt_fee
    root = MerkleTree(hashes).root
    epoch = Epoch(
        number=number,
        status=EpochStatus.PENDING,
        receipts_root=_hex(root),
        receipt_count=len(hashes),
        total_debit=sum(debits.values()),
        total_credit=sum(credits.values()),
        fee=fee,
        created_at=utcnow(),
    )
    repo.add(epoch)
    lines = [
        EpochLine(epoch=number, kind=LineKind.DEBIT, address=a, amount=v)
        for a, v in sorted(debits.items())
        if v > 0
    ] + [
        EpochLine(epoch=number, kind=LineKind.CREDIT, address=a, amount=v)
        for a, v in sorted(credits.items())
        if v > 0
    ]
    repo.add(*lines)
    cursor.position = number
    cursor.updated_at = utcnow()
    session.flush()
    log.info("opened epoch %d: %d receipts, root %s", number, len(hashes), epoch.receipts_root)
    return epoch


def batch_of(session: Session, epoch: Epoch) -> EpochBatch:
    """The `settleEpoch` batch of a recorded epoch."""
    lines = SettlementRepository(session).lines_of(epoch.number)
    return EpochBatch(
        epoch=epoch.number,
        receipts_root=hash_bytes(epoch.receipts_root),
        receipt_count=epoch.receipt_count,
        fee=epoch.fee,
        debits=[Debit(line.address, line.amount) for line in lines if line.kind is LineKind.DEBIT],
        credits=[
            Credit(line.address, line.amount) for line in lines if line.kind is LineKind.CREDIT
        ],
        rewards=[
            Credit(line.address, line.amount) for line in lines if line.kind is LineKind.REWARD
        ],
    )


def begin_submission(
    session: Session,
    client: SettlementClient,
    number: int,
    reward_pool: int = 0,
    confirmations: int = 0,
) -> EpochBatch | None:
    """The batch to send for epoch `number`, marked submitted; None if nothing is to be sent
    (already settled, settled on-chain and now recorded once `confirmations` blocks bury it,
    or a recent submission in flight).

    The epoch's network-token rewards (at most `reward_pool`) are decided here, just before
    each send, so that eligibility and `minRewardInterval` are judged against the chain as
    it is when the batch goes out (`market.rewards.service`)."""
    repo = SettlementRepository(session)
    repo.lock_cursor(EPOCH_CURSOR, 0)
    epoch = _epoch(repo, number)
    if epoch.status is EpochStatus.SETTLED:
        return None
    if client.last_settled_epoch() >= number:
        record_settlement(session, client, number, confirmations=confirmations)
        return None
    if (
        epoch.status is EpochStatus.SUBMITTED
        and epoch.submitted_at is not None
        and utcnow() - epoch.submitted_at < RESUBMIT_AFTER
    ):
        return None
    decide_rewards(session, client, epoch, reward_pool)
    epoch.status = EpochStatus.SUBMITTED
    epoch.submitted_at = utcnow()
    session.flush()
    return batch_of(session, epoch)


def record_sent(session: Session, number: int, sent: SentTransaction) -> None:
    """Records on epoch `number` the settlement transaction the node just accepted: the one
    the epoch now waits on (module doc)."""
    epoch = _epoch(SettlementRepository(session), number)
    epoch.sent_tx_hash, epoch.sent_nonce = sent.tx_hash, sent.nonce
    epoch.sent_max_fee_per_gas = sent.max_fee_per_gas
    epoch.sent_max_priority_fee_per_gas = sent.max_priority_fee_per_gas
    epoch.sent_at = utcnow()
    session.flush()
    log.info("epoch %d waits on %s (nonce %d)", number, sent.tx_hash, sent.nonce)


def record_settlement(
    session: Session,
    client: SettlementClient,
    number: int,
    tx_hash: str | None = None,
    block: int | None = None,
    confirmations: int = 0,
) -> Epoch:
    """Records epoch `number` as settled once the chain holds its root under `confirmations`
    blocks, and books the settlement in the ledger (module doc). Idempotent; a different root
    on-chain raises. Settled but not yet that deep, the epoch is returned unchanged: a reorg
    could still take the settlement away, and the ledger would then be ahead of the chain."""
    repo = SettlementRepository(session)
    repo.lock_cursor(EPOCH_CURSOR, 0)
    epoch = _epoch(repo, number)
    if epoch.status is EpochStatus.SETTLED:
        return epoch
    if client.last_settled_epoch() < number:
        raise EpochNotOnChainError(f"epoch {number} is not settled on-chain")
    if confirmations and client.last_settled_epoch(client.confirmed_head(confirmations)) < number:
        return epoch
    onchain = _hex(client.epoch_root(number))
    if onchain != epoch.receipts_root:
        raise EpochRootMismatchError(
            f"epoch {number} was settled on-chain with root {onchain}, "
            f"the market built {epoch.receipts_root}: investigate before settling anything else"
        )
    if tx_hash is None:
        tx_hash, block = _find_settlement_tx(client, number)
    if block is not None and epoch.total_reward > 0:
        record_forfeits(session, epoch, client.forfeited_rewards(number, block))
    legs: list[Leg] = []
    for line in repo.lines_of(number):
        if line.kind is LineKind.CREDIT:
            legs += [Leg(provider_earned(line.address), -line.amount)]
            legs += [Leg(provider_settled(line.address), line.amount)]
    if epoch.fee > 0:
        legs += [Leg(PROTOCOL_FEES, -epoch.fee), Leg(PROTOCOL_SETTLED_FEES, epoch.fee)]
    if legs:
        post_transfer(
            session,
            kind=TransferKind.SETTLE,
            idempotency_key=f"settle:{number}",
            legs=legs,
            epoch=number,
        )
    epoch.status = EpochStatus.SETTLED
    epoch.tx_hash, epoch.block = tx_hash, block
    epoch.settled_at = utcnow()
    session.flush()
    log.info("epoch %d settled in %s", number, tx_hash)
    return epoch


def discard_epoch(session: Session, client: SettlementClient, number: int) -> int:
    """Forgets epoch `number`, whose batch the chain refused (`InsufficientEscrow`: a buyer
    took escrow the market had charged): its receipts go back to no epoch, so the next close
    builds the epoch anew without the buyers the chain cannot debit (`coverage`). How many
    receipts it released; 0, with nothing changed, if the chain settled the epoch after all.
    """
    repo = SettlementRepository(session)
    repo.lock_cursor(EPOCH_CURSOR, 0)
    epoch = _epoch(repo, number)
    if epoch.status is EpochStatus.SETTLED or client.last_settled_epoch() >= number:
        return 0
    released = repo.discard_epoch(number)
    log.warning("epoch %d discarded; its %d receipts wait for the next close", number, released)
    return released


def _find_settlement_tx(client: SettlementClient, number: int) -> tuple[str | None, int | None]:
    head = client.confirmed_head(0)
    start = max(client.deployment.block, head - 100_000)
    for event in client.events("EpochSettled", start, head):
        if int(event.args["epoch"]) == number:
            return event.tx_hash, event.block
    return None, None


def _epoch(repo: SettlementRepository, number: int) -> Epoch:
    epoch = repo.get_epoch(number, for_update=True)
    if epoch is None:
        raise EpochNotFoundError(f"no epoch {number}")
    return epoch


# -- the chain watcher --------------------------------------------------------------------

WATCHED_EVENTS = (
    "Deposited",
    "WithdrawalRequested",
    "Withdrawn",
    "EarningsWithdrawn",
    "FeesWithdrawn",
    "ProviderKeyRotated",
)


@dataclass(frozen=True)
class WatchRound:
    """What one watcher transaction did. `waiting`: it stopped before the block of a
    withdrawal of settled funds whose settlement the ledger has not booked yet (the next
    epoch close books it)."""

    from_block: int
    to_block: int
    events: int
    caught_up: bool
    waiting: bool = False


def watch_chain(
    session: Session, client: SettlementClient, confirmations: int, max_blocks: int = WATCH_BLOCKS
) -> WatchRound:
    """Books the confirmed buyer events, withdrawals of settled earnings and fees, and key
    rotations after the cursor (at most `max_blocks` blocks) and moves the cursor past them,
    in the caller's transaction. Safe to run twice or at once: the cursor row is locked,
    every posting is idempotent on its log, and a rotation already followed changes nothing.

    A provider (or the protocol) can withdraw what an epoch paid it as soon as the settlement
    is mined, while the ledger books the settlement only once it is buried
    (`record_settlement`). A withdrawal of more than the ledger has booked as settled ends
    the round before that withdrawal's block (`waiting`), so that the cursor always means
    "every block before it is booked, none after"; the round after the settlement is booked
    goes on from there."""
    repo = SettlementRepository(session)
    cursor = repo.lock_cursor(CHAIN_CURSOR, client.deployment.block)
    head = client.confirmed_head(confirmations)
    start = cursor.position
    if head < start:
        return WatchRound(start, start - 1, 0, True)
    end = min(head, start + max_blocks - 1)
    events = client.events_of(WATCHED_EVENTS, start, end)
    stop = _first_early_payout(session, events)
    if stop is not None:
        log.warning(
            "%s in block %d takes more than the ledger has booked as settled: the watcher "
            "waits before that block until the epoch close books the settlement",
            stop.name,
            stop.block,
        )
        end = stop.block - 1
        events = [e for e in events if e.block <= end]
    for event in events:
        _apply(session, event)
    cursor.position = end + 1
    cursor.updated_at = utcnow()
    session.flush()
    return WatchRound(start, end, len(events), stop is not None or end == head, stop is not None)


def _payout_account(event: ChainEvent) -> AccountRef | None:
    """The settled account a withdrawal of settled funds takes from (None: another event)."""
    if event.name == "EarningsWithdrawn":
        return provider_settled(str(event.args["provider"]))
    if event.name == "FeesWithdrawn":
        return PROTOCOL_SETTLED_FEES
    return None


def _first_early_payout(session: Session, events: list[ChainEvent]) -> ChainEvent | None:
    """The first withdrawal of settled funds that, with the ones before it, takes more than
    the ledger has booked as settled in its account (None: all are covered)."""
    taken: dict[str, int] = {}
    for event in events:
        account = _payout_account(event)
        if account is None or _booked(session, _payout_key(event)):
            continue
        taken[account.name] = taken.get(account.name, 0) + int(event.args["amount"])
        if balance(session, account) < taken[account.name]:
            return event
    return None


def _payout_key(event: ChainEvent) -> str:
    return f"payout:{event.tx_hash}:{event.log_index}"


def _booked(session: Session, key: str) -> bool:
    return LedgerRepository(session).get_transfer_by_key(key) is not None


def _apply(session: Session, event: ChainEvent) -> None:
    args = event.args
    if event.name == "ProviderKeyRotated":
        old, new = "0x" + bytes(args["oldKey"]).hex(), "0x" + bytes(args["newKey"]).hex()
        if key_rotated(session, str(args["provider"]), old, new):
            log.warning("provider %s rotated its key on-chain: %s is void", args["provider"], old)
        return
    amount = int(args["amount"])
    payout = _payout_account(event)
    if payout is not None:
        # settled funds leaving the contract: the account -> the chain's contra account
        legs = [Leg(payout, -amount), Leg(CHAIN_ESCROW, amount)]
        _post_event(session, TransferKind.WITHDRAWAL, _payout_key(event), legs, event)
        return
    buyer = checksum_address(str(args["buyer"]))
    if event.name == "Deposited":
        get_or_create_buyer(session, buyer)
        credit_deposit(session, buyer, amount, event.tx_hash, event.log_index)
        _repay_overdraft(session, buyer, event)
    elif event.name == "WithdrawalRequested":
        _withdrawal_requested(session, buyer, amount, event)
    elif event.name == "Withdrawn":
        _withdrawn(session, buyer, amount, event)


def _balances(session: Session, *refs: AccountRef) -> list[int]:
    repo = LedgerRepository(session)
    repo.ensure_accounts(refs)
    accounts = repo.lock_accounts(r.name for r in refs)
    return [accounts[r.name].balance for r in refs]


def _withdrawal_requested(session: Session, buyer: str, amount: int, event: ChainEvent) -> None:
    key = f"withdrawal-request:{event.tx_hash}:{event.log_index}"
    if _booked(session, key):
        return
    available, withdrawing = buyer_available(buyer), buyer_withdrawing(buyer)
    free, pending = _balances(session, available, withdrawing)
    target = min(amount, free + pending)  # the newest request replaces the pending one
    if target < amount:
        log.warning("buyer %s asked to withdraw %d, only %d is not held", buyer, amount, target)
    delta = target - pending
    if delta == 0:
        return
    legs = [Leg(available, -delta), Leg(withdrawing, delta)]
    _post_event(session, TransferKind.WITHDRAWAL, key, legs, event)


def _repay_overdraft(session: Session, buyer: str, event: ChainEvent) -> None:
    """A deposit first pays back what the buyer overdrew: the contract's next settlement
    debits it from the new escrow, so it is not available for holds. A buyer who owes nothing
    (the rule) costs one read: no account is created for it."""
    available, overdrawn = buyer_available(buyer), buyer_overdrawn(buyer)
    if balance(session, overdrawn) >= 0:
        return
    key = f"repay:{event.tx_hash}:{event.log_index}"
    if _booked(session, key):
        return
    free, owed = _balances(session, available, overdrawn)
    repaid = min(free, -owed)
    if repaid > 0:
        legs = [Leg(available, -repaid), Leg(overdrawn, repaid)]
        _post_event(session, TransferKind.CHARGE, key, legs, event)


def _withdrawn(session: Session, buyer: str, amount: int, event: ChainEvent) -> None:
    key = f"withdrawal:{event.tx_hash}:{event.log_index}"
    if _booked(session, key):
        return
    available, withdrawing = buyer_available(buyer), buyer_withdrawing(buyer)
    free, pending = _balances(session, available, withdrawing)
    from_pending = min(amount, pending)
    from_free = min(amount - from_pending, free)
    overdrawn = amount - from_pending - from_free
    if overdrawn:
        log.warning(
            "buyer %s withdrew %d, %d more than the ledger left free: charged escrow it owes",
            buyer,
            amount,
            overdrawn,
        )
    legs = [Leg(CHAIN_ESCROW, amount)]
    if from_pending:
        legs.append(Leg(withdrawing, -from_pending))
    if from_free:
        legs.append(Leg(available, -from_free))
    if overdrawn:
        legs.append(Leg(buyer_overdrawn(buyer), -overdrawn))
    if amount:
        _post_event(session, TransferKind.WITHDRAWAL, key, legs, event)


def _post_event(
    session: Session, kind: TransferKind, key: str, legs: list[Leg], event: ChainEvent
) -> None:
    """Posts a transfer booked from a chain log, tagged with the log's (tx_hash, log_index)."""
    post_transfer(
        session,
        kind=kind,
        idempotency_key=key,
        legs=legs,
        tx_hash=event.tx_hash.lower(),
        log_index=event.log_index,
    )


# -- reading ------------------------------------------------------------------------------


def list_epochs(session: Session, limit: int = 50, before: int | None = None) -> list[EpochRead]:
    """Epochs, newest first."""
    return [_epoch_read(e) for e in SettlementRepository(session).list_epochs(limit, before)]


def _epoch_read(epoch: Epoch) -> EpochRead:
    """What an epoch shows: with the transaction it waits on while submitted."""
    read = EpochRead.model_validate(epoch)
    if epoch.status is not EpochStatus.SUBMITTED or epoch.sent_tx_hash is None:
        return read
    read.pending_tx = PendingTransaction.model_validate(epoch)
    return read


def get_epoch(session: Session, number: int) -> EpochDetail:
    """One epoch with its debit and credit lines."""
    repo = SettlementRepository(session)
    epoch = repo.get_epoch(number)
    if epoch is None:
        raise EpochNotFoundError(f"no epoch {number}")
    lines = [LineRead.model_validate(line) for line in repo.lines_of(number)]
    weights = [RewardWeightRead.model_validate(w) for w in repo.reward_weights_of(number)]
    return EpochDetail(**dict(_epoch_read(epoch)), lines=lines, reward_weights=weights)


_TREES: dict[tuple[int, str], MerkleTree] = {}
_TREES_KEPT = 4


def receipt_proof(session: Session, job_id: str) -> ReceiptProof:
    """The inclusion proof of a job's receipt in its settled epoch (for `verifyReceipt`)."""
    repo = SettlementRepository(session)
    receipt = repo.get_receipt(job_id)
    if receipt is None or receipt.epoch is None or receipt.leaf_index is None:
        raise ReceiptNotSettledError(f"job {job_id} has no receipt in an epoch")
    epoch = repo.get_epoch(receipt.epoch)
    if epoch is None or epoch.status is not EpochStatus.SETTLED:
        raise ReceiptNotSettledError(f"the epoch of job {job_id} is not settled yet")
    key = (epoch.number, epoch.receipts_root)
    tree = _TREES.get(key)
    if tree is None:
        tree = MerkleTree([hash_bytes(h) for h in repo.epoch_hashes(epoch.number)])
        if _hex(tree.root) != epoch.receipts_root:
            raise EpochRootMismatchError(f"epoch {epoch.number}'s receipts no longer give its root")
        if len(_TREES) >= _TREES_KEPT:
            _TREES.pop(next(iter(_TREES)))
        _TREES[key] = tree
    return ReceiptProof(
        job_id=job_id,
        epoch=epoch.number,
        leaf_index=receipt.leaf_index,
        receipt_hash=receipt.receipt_hash,
        proof=[_hex(p) for p in tree.proof(receipt.leaf_index)],
        root=epoch.receipts_root,
        settlement_contract=None,
    )
