"""The ledger's rules: deposits, holds, charges, releases, balances and statements.

Every function takes the caller's session, flushes, and never commits: the request or task
that calls it owns the transaction (`market.db.session_scope`). Holds, charges and releases,
which every request makes, are written with Core statements on the session's connection
(no unit of work); the ORM copies the session holds of the rows they change are expired.

Concurrency: a writer first locks, in name order, every account row it will touch
(`SELECT ... FOR UPDATE` on PostgreSQL; on SQLite every transaction is `BEGIN IMMEDIATE`, so
writers run one at a time), then checks idempotency keys and balances, then posts. Two holds on
one buyer therefore run one after the other and the second sees the first's effect; the fixed
lock order keeps any two writers from deadlocking. A hold's own row is locked before accounts
when it is settled or released, so a job cannot be settled twice at once.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from sqlalchemy.orm import Session

from market.addresses import checksum_address as _checksum_address
from market.db import utcnow
from market.errors import (
    ChargeExceedsHoldError,
    HoldClosedError,
    HoldNotFoundError,
    IdempotencyConflictError,
    InsufficientFundsError,
    InvalidAmountError,
    InvalidRequestError,
    LedgerInconsistentError,
    UnbalancedTransferError,
)
from market.ledger.models import (
    Account,
    Hold,
    HoldStatus,
    OwnerKind,
    Posting,
    Transfer,
    TransferKind,
)
from market.ledger.repository import AccountRef, LedgerRepository, LockedAccount, LockedHold
from market.ledger.schemas import Statement, StatementLine

_TX_HASH = re.compile(r"^0x[0-9a-fA-F]{64}$")
_JOB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")

PROTOCOL_FEES = AccountRef(OwnerKind.PROTOCOL, None, "fees")
"""Fees the protocol has earned and not yet settled."""


@lru_cache(maxsize=65_536)
def _checksummed(value: str) -> str:
    return _checksum_address(value)


def checksum_address(value: str) -> str:
    """`market.addresses.checksum_address`, remembered: every movement names its owners'
    accounts, and EIP-55 (a Keccak hash per call) would otherwise run several times per
    request for the same few addresses."""
    try:
        return _checksummed(value)
    except TypeError:  # unhashable, so not an address: refused with the reason
        return _checksum_address(value)


CHAIN_ESCROW = AccountRef(OwnerKind.CHAIN, None, "escrow")
"""Contra account of on-chain deposits: minus what the contract holds for the market's users."""


def buyer_available(buyer: str) -> AccountRef:
    """The buyer's escrow that is free to be held."""
    return AccountRef(OwnerKind.BUYER, checksum_address(buyer), "available")


def buyer_held(buyer: str) -> AccountRef:
    """The buyer's escrow reserved by holds on jobs in flight."""
    return AccountRef(OwnerKind.BUYER, checksum_address(buyer), "held")


def provider_earned(provider: str) -> AccountRef:
    """What the provider has earned from charges."""
    return AccountRef(OwnerKind.PROVIDER, checksum_address(provider), "earned")


@dataclass(frozen=True)
class Leg:
    """One side of a transfer before it is posted: a signed amount on an account."""

    account: AccountRef
    amount: int


# -- the one way money moves --------------------------------------------------------------


def post_transfer(
    session: Session,
    *,
    kind: TransferKind,
    idempotency_key: str,
    legs: Sequence[Leg],
    job_id: str | None = None,
    epoch: int | None = None,
    tx_hash: str | None = None,
    log_index: int | None = None,
) -> Transfer:
    """Posts one balanced transfer, or returns the one already posted under the same key.

    Refuses, before anything is written: legs that do not sum to zero, zero or non-integer
    amounts, an account named twice, and any leg that would take an account other than the
    chain's contra account below zero (`InsufficientFundsError`). Reusing a key for different
    legs raises `IdempotencyConflictError`.
    """
    new = Transfer(
        kind=kind,
        idempotency_key=idempotency_key,
        job_id=job_id,
        epoch=epoch,
        tx_hash=tx_hash,
        log_index=log_index,
    )
    transfer, _ = _post(session, new, legs)
    return transfer


def _check_legs(legs: Sequence[Leg]) -> None:
    if len(legs) < 2:
        raise UnbalancedTransferError(f"a transfer needs at least two legs, got {len(legs)}")
    for leg in legs:
        _require_amount(leg.amount, f"leg on {leg.account.name}", allow_negative=True)
        if leg.amount == 0:
            raise InvalidAmountError(f"leg on {leg.account.name} has amount 0")
    names = [leg.account.name for leg in legs]
    if len(set(names)) != len(names):
        raise UnbalancedTransferError(f"an account appears twice in one transfer: {names}")
    total = sum(leg.amount for leg in legs)
    if total != 0:
        raise UnbalancedTransferError(f"postings sum to {total}, not 0: {names}")


def _same_legs(transfer: Transfer, kind: TransferKind, legs: Sequence[Leg]) -> bool:
    stored = sorted((p.account.name, p.amount) for p in transfer.postings)
    wanted = sorted((leg.account.name, leg.amount) for leg in legs)
    return transfer.kind == kind and stored == wanted


def _post(session: Session, new: Transfer, legs: Sequence[Leg]) -> tuple[Transfer, bool]:
    """`post_transfer` of `new`, an unsaved transfer with its kind, key and references (its
    postings and time are set here), also saying whether the transfer returned is `new`, now
    posted (True), or a replay, the one already posted under the key (False)."""
    kind, idempotency_key = new.kind, new.idempotency_key
    _check_legs(legs)
    if not idempotency_key or len(idempotency_key) > 200:
        raise InvalidRequestError("an idempotency key is 1 to 200 characters")
    repo = LedgerRepository(session)
    repo.ensure_accounts(leg.account for leg in legs)
    accounts = repo.lock_accounts(leg.account.name for leg in legs)

    existing = repo.get_transfer_by_key(idempotency_key)
    if existing is not None:
        if not _same_legs(existing, kind, legs):
            raise IdempotencyConflictError(
                f"idempotency key {idempotency_key!r} was used for a different transfer "
                f"(#{existing.id}, {existing.kind.value})"
            )
        return existing, False

    for leg in legs:
        account = accounts[leg.account.name]
        if account.owner_kind is not OwnerKind.CHAIN and account.balance + leg.amount < 0:
            raise InsufficientFundsError(account.name, account.balance, -leg.amount)

    new.created_at = utcnow()
    for leg in legs:
        account = accounts[leg.account.name]
        new.postings.append(Posting(account=account, amount=leg.amount))
        account.balance += leg.amount
    repo.add_transfer(new)
    return new, True


# -- operations ---------------------------------------------------------------------------


def credit_deposit(
    session: Session, buyer: str, amount: int, tx_hash: str, log_index: int
) -> Transfer:
    """Credits an on-chain deposit to the buyer's available balance, once per log.

    Idempotent on (tx_hash, log_index): the chain watcher may see the same log again.
    """
    _require_amount(amount, "deposit amount")
    tx_hash = _require_tx(tx_hash, log_index)
    return post_transfer(
        session,
        kind=TransferKind.DEPOSIT,
        idempotency_key=f"deposit:{tx_hash}:{log_index}",
        legs=[Leg(CHAIN_ESCROW, -amount), Leg(buyer_available(buyer), amount)],
        tx_hash=tx_hash,
        log_index=log_index,
    )


def place_hold(session: Session, buyer: str, job_id: str, amount: int) -> Hold:
    """Reserves `amount` of the buyer's available balance for `job_id`.

    Raises `InsufficientFundsError` if the buyer has less available. Placing the same hold
    again returns the first; a different amount or buyer for the same job is a conflict.

    A new hold takes five statements: the account lock, then the transfer, its postings,
    the balances and the hold row. The transfer's idempotency key (`hold:<job>`) is posted in
    the same transaction as the hold row, so a key already taken means the hold exists: that
    case (a replay, or a concurrent request that won the race) takes the general path.
    """
    _require_amount(amount, "hold amount")
    _require_job_id(job_id)
    buyer = checksum_address(buyer)
    session.flush()
    repo = LedgerRepository(session)
    legs = [Leg(buyer_available(buyer), -amount), Leg(buyer_held(buyer), amount)]
    locked = repo.lock_balances(leg.account for leg in legs)
    posted = _post_locked(repo, locked, TransferKind.HOLD, f"hold:{job_id}", legs, job_id)
    if posted is None:
        return _place_hold_again(session, buyer, job_id, amount)
    transfer_id, postings = posted
    repo.insert_postings(postings)
    repo.write_balances(locked.values())
    return repo.insert_hold(job_id, buyer, amount, transfer_id)


def _place_hold_again(session: Session, buyer: str, job_id: str, amount: int) -> Hold:
    """`place_hold` when its transfer key is taken: the hold already placed, if it agrees."""
    repo = LedgerRepository(session)
    held_before = repo.get_hold(job_id)
    if held_before is not None:
        return _same_hold(held_before, buyer, amount)
    transfer, created = _post(
        session,
        Transfer(kind=TransferKind.HOLD, idempotency_key=f"hold:{job_id}", job_id=job_id),
        [Leg(buyer_available(buyer), -amount), Leg(buyer_held(buyer), amount)],
    )
    if not created:  # a concurrent request placed it while we waited for the lock
        hold = repo.get_hold(job_id)
        if hold is None:
            raise LedgerInconsistentError(f"hold transfer #{transfer.id} has no hold row")
        return _same_hold(hold, buyer, amount)
    return repo.add_hold(
        Hold(
            job_id=job_id,
            buyer=buyer,
            amount=amount,
            status=HoldStatus.OPEN,
            hold_transfer_id=transfer.id,
            created_at=utcnow(),
        )
    )


def _post_locked(
    repo: LedgerRepository,
    locked: dict[str, LockedAccount],
    kind: TransferKind,
    idempotency_key: str,
    legs: Sequence[Leg],
    job_id: str,
) -> tuple[int, list[tuple[int, int, int]]] | None:
    """Posts a balanced transfer on accounts the caller has locked (`lock_balances`): checks
    the legs and balances, inserts the transfer row and moves the balances in `locked`; the
    transfer id and the postings for the caller to insert (with `write_balances`). None,
    with nothing written, if the idempotency key is taken: the caller takes the general
    path (`post_transfer`), which replays or refuses it."""
    _check_legs(legs)
    for leg in legs:
        account = locked[leg.account.name]
        if account.owner_kind is not OwnerKind.CHAIN and account.balance + leg.amount < 0:
            if repo.get_transfer_by_key(idempotency_key) is not None:
                return None  # a replay answers with what was posted, whatever the balance now
            raise InsufficientFundsError(leg.account.name, account.balance, -leg.amount)
    transfer_id = repo.insert_transfer(kind, idempotency_key, job_id)
    if transfer_id is None:
        return None
    postings = []
    for leg in legs:
        account = locked[leg.account.name]
        account.balance += leg.amount
        account.changed = True
        postings.append((transfer_id, account.id, leg.amount))
    return transfer_id, postings


def _same_hold(hold: Hold, buyer: str, amount: int) -> Hold:
    if hold.buyer != buyer or hold.amount != amount:
        raise IdempotencyConflictError(
            f"job {hold.job_id} already has a hold of {hold.amount} for {hold.buyer}"
        )
    return hold


def settle_hold(session: Session, job_id: str, charge: int, provider: str, fee: int) -> Hold:
    """Charges `charge` against the job's hold and releases the rest.

    Of the charge, `fee` goes to the protocol and `charge - fee` to the provider's earnings.
    Requires 0 <= fee <= charge <= the hold. Settling again with the same figures returns the
    hold; with other figures, or after a release, it is refused.

    Statements: the hold's lock, the accounts' lock, one insert per transfer (charge,
    release), their postings together, the balances, the hold's update.
    """
    _require_amount(charge, "charge", allow_zero=True)
    _require_amount(fee, "fee", allow_zero=True)
    if fee > charge:
        raise ChargeExceedsHoldError(f"fee {fee} is larger than the charge {charge}")
    provider = checksum_address(provider)
    session.flush()
    repo = LedgerRepository(session)
    hold = _locked_hold_row(repo, job_id)
    if hold.status is HoldStatus.SETTLED:
        if (hold.charged, hold.fee, hold.provider) != (charge, fee, provider):
            raise IdempotencyConflictError(
                f"job {job_id} was settled with charge {hold.charged}, fee {hold.fee}, "
                f"provider {hold.provider}"
            )
        return get_hold(session, job_id)
    if hold.status is HoldStatus.RELEASED:
        raise HoldClosedError(f"the hold of job {job_id} was released")
    if charge > hold.amount:
        raise ChargeExceedsHoldError(f"charge {charge} exceeds the hold {hold.amount}")

    held, available = buyer_held(hold.buyer), buyer_available(hold.buyer)
    earned = provider_earned(provider)
    # Lock every account both transfers touch, at once and in order (see the module doc).
    locked = repo.lock_balances([held, available, earned, PROTOCOL_FEES])
    moves: list[tuple[TransferKind, str, list[Leg]]] = []
    if charge > 0:
        legs = [Leg(held, -charge)]
        if charge - fee > 0:
            legs.append(Leg(earned, charge - fee))
        if fee > 0:
            legs.append(Leg(PROTOCOL_FEES, fee))
        moves.append((TransferKind.CHARGE, f"charge:{job_id}", legs))
    rest = hold.amount - charge
    if rest > 0:
        moves.append(
            (TransferKind.RELEASE, f"release:{job_id}", [Leg(held, -rest), Leg(available, rest)])
        )
    _post_all(session, repo, locked, moves, job_id)
    closed = repo.close_hold(
        hold.id, HoldStatus.SETTLED, provider=provider, charged=charge, fee=fee
    )
    return Hold(
        id=hold.id,
        job_id=job_id,
        buyer=hold.buyer,
        amount=hold.amount,
        status=HoldStatus.SETTLED,
        provider=provider,
        charged=charge,
        fee=fee,
        closed_at=closed,
    )


def _post_all(
    session: Session,
    repo: LedgerRepository,
    locked: dict[str, LockedAccount],
    moves: Sequence[tuple[TransferKind, str, list[Leg]]],
    job_id: str,
) -> None:
    """Posts transfers on locked accounts; a taken key goes the general way (replay or
    conflict), after what was posted here is written."""
    postings: list[tuple[int, int, int]] = []
    fallback: list[tuple[TransferKind, str, list[Leg]]] = []
    for kind, key, legs in moves:
        if fallback:
            fallback.append((kind, key, legs))
            continue
        posted = _post_locked(repo, locked, kind, key, legs, job_id)
        if posted is None:
            fallback.append((kind, key, legs))
        else:
            postings.extend(posted[1])
    if postings:
        repo.insert_postings(postings)
    repo.write_balances(locked.values())
    for kind, key, legs in fallback:
        post_transfer(session, kind=kind, idempotency_key=key, legs=legs, job_id=job_id)


def release_hold(session: Session, job_id: str) -> Hold:
    """Returns the whole hold to the buyer's available balance (the job cost nothing).

    Releasing twice returns the hold; releasing a settled hold is refused.
    """
    session.flush()
    repo = LedgerRepository(session)
    hold = _locked_hold_row(repo, job_id)
    if hold.status is HoldStatus.RELEASED:
        return get_hold(session, job_id)
    if hold.status is HoldStatus.SETTLED:
        raise HoldClosedError(f"the hold of job {job_id} was settled")
    held, available = buyer_held(hold.buyer), buyer_available(hold.buyer)
    locked = repo.lock_balances([held, available])
    legs = [Leg(held, -hold.amount), Leg(available, hold.amount)]
    _post_all(session, repo, locked, [(TransferKind.RELEASE, f"release:{job_id}", legs)], job_id)
    closed = repo.close_hold(hold.id, HoldStatus.RELEASED)
    return Hold(
        id=hold.id,
        job_id=job_id,
        buyer=hold.buyer,
        amount=hold.amount,
        status=HoldStatus.RELEASED,
        closed_at=closed,
    )


def _locked_hold_row(repo: LedgerRepository, job_id: str) -> LockedHold:
    _require_job_id(job_id)
    hold = repo.lock_hold(job_id)
    if hold is None:
        raise HoldNotFoundError(f"no hold for job {job_id}")
    return hold


# -- reading ------------------------------------------------------------------------------


def balance(session: Session, account: str | AccountRef) -> int:
    """The account's balance (0 for an account that has never been posted to)."""
    name = account.name if isinstance(account, AccountRef) else account
    found: Account | None = LedgerRepository(session).get_account(name)
    return 0 if found is None else found.balance


def get_hold(session: Session, job_id: str) -> Hold:
    """The hold of `job_id`."""
    hold = LedgerRepository(session).get_hold(job_id)
    if hold is None:
        raise HoldNotFoundError(f"no hold for job {job_id}")
    return hold


def statement(session: Session, owner: str, limit: int = 100) -> Statement:
    """The owner's balances, totals by kind of movement, and its latest `limit` movements."""
    owner = checksum_address(owner)
    repo = LedgerRepository(session)
    balances = {a.bucket: a.balance for a in repo.accounts_of(owner)}
    postings = repo.postings_of(owner)
    totals: dict[tuple[TransferKind, str], int] = {}
    for p in postings:
        key = (p.kind, p.bucket)
        totals[key] = totals.get(key, 0) + p.amount
    lines = [
        StatementLine(
            transfer_id=p.transfer_id,
            kind=p.kind,
            account=p.account,
            amount=p.amount,
            job_id=p.job_id,
            epoch=p.epoch,
            tx_hash=p.tx_hash,
            log_index=p.log_index,
            created_at=p.created_at,
        )
        for p in reversed(postings[-limit:] if limit > 0 else [])
    ]
    return Statement(
        owner=owner,
        balances=balances,
        available=balances.get("available", 0),
        held=balances.get("held", 0),
        earned=balances.get("earned", 0),
        deposited=totals.get((TransferKind.DEPOSIT, "available"), 0),
        holds_placed=totals.get((TransferKind.HOLD, "held"), 0),
        charged=-totals.get((TransferKind.CHARGE, "held"), 0),
        released=totals.get((TransferKind.RELEASE, "available"), 0),
        withdrawn=-totals.get((TransferKind.WITHDRAWAL, "available"), 0),
        lines=lines,
    )


def check_ledger(session: Session) -> None:
    """Proves the books: stored balances equal their postings, and everything sums to zero.

    Raises `LedgerInconsistentError` naming what disagrees.
    """
    repo = LedgerRepository(session)
    stored = repo.stored_balances()
    derived = repo.derived_balances()
    wrong = {
        name: (stored.get(name, 0), derived.get(name, 0))
        for name in stored.keys() | derived.keys()
        if stored.get(name, 0) != derived.get(name, 0)
    }
    if wrong:
        raise LedgerInconsistentError(f"stored balance != sum of postings: {wrong}")
    unbalanced = repo.unbalanced_transfers()
    if unbalanced:
        raise LedgerInconsistentError(f"transfers whose postings do not sum to 0: {unbalanced}")
    total = sum(stored.values())
    if total != 0:
        raise LedgerInconsistentError(f"balances sum to {total}, not 0")


# -- validation ---------------------------------------------------------------------------


def _require_amount(
    value: object, what: str, *, allow_zero: bool = False, allow_negative: bool = False
) -> None:
    if type(value) is not int:
        raise InvalidAmountError(f"{what} must be an int in base units, got {value!r}")
    if allow_negative:
        return
    if value < 0 or (value == 0 and not allow_zero):
        bound = "non-negative" if allow_zero else "positive"
        raise InvalidAmountError(f"{what} must be {bound}, got {value}")


def _require_tx(tx_hash: str, log_index: int) -> str:
    if not isinstance(tx_hash, str) or not _TX_HASH.match(tx_hash):
        raise InvalidRequestError(f"tx_hash must be 0x and 64 hex digits, got {tx_hash!r}")
    if type(log_index) is not int or log_index < 0:
        raise InvalidRequestError(f"log_index must be a non-negative int, got {log_index!r}")
    return tx_hash.lower()


def _require_job_id(job_id: str) -> None:
    if not isinstance(job_id, str) or not _JOB_ID.match(job_id):
        raise InvalidRequestError(
            f"job id must be 1-64 characters of [A-Za-z0-9._:-], got {job_id!r}"
        )
