"""The double-entry ledger on SQLite and PostgreSQL: deposits, holds, charges, releases."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine, func, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from market.db import create_engine, session_scope
from market.errors import (
    ChargeExceedsHoldError,
    HoldClosedError,
    HoldNotFoundError,
    IdempotencyConflictError,
    InsufficientFundsError,
    InvalidAddressError,
    InvalidAmountError,
    InvalidRequestError,
    LedgerInconsistentError,
    UnbalancedTransferError,
)
from market.ledger import service as ledger
from market.ledger.models import Account, Hold, HoldStatus, Posting, Transfer, TransferKind
from market.ledger.schemas import HoldRead, TransferRead
from market.ledger.service import (
    CHAIN_ESCROW,
    PROTOCOL_FEES,
    Leg,
    buyer_available,
    buyer_held,
    provider_earned,
)
from tests.market.factories import funded_buyer, new_address, new_job_id, new_tx_hash


def _count(session: Session, model: type[Account | Transfer | Posting | Hold]) -> int:
    return int(session.scalar(select(func.count()).select_from(model)) or 0)


# -- deposits -----------------------------------------------------------------------------


def test_deposit_credits_available_against_the_chain_escrow(session: Session) -> None:
    buyer = new_address()
    tx = new_tx_hash()
    transfer = ledger.credit_deposit(session, buyer, 1_000_000, tx, 3)
    assert transfer.kind is TransferKind.DEPOSIT
    assert (transfer.tx_hash, transfer.log_index) == (tx, 3)
    assert ledger.balance(session, buyer_available(buyer)) == 1_000_000
    assert ledger.balance(session, CHAIN_ESCROW) == -1_000_000
    assert ledger.balance(session, f"buyer:{buyer}:available") == 1_000_000
    ledger.check_ledger(session)


def test_deposit_is_idempotent_on_tx_hash_and_log_index(session: Session) -> None:
    buyer, tx = new_address(), new_tx_hash()
    first = ledger.credit_deposit(session, buyer, 500, tx, 0)
    again = ledger.credit_deposit(session, buyer, 500, tx.upper().replace("0X", "0x"), 0)
    other_log = ledger.credit_deposit(session, buyer, 500, tx, 1)
    assert again.id == first.id
    assert other_log.id != first.id
    assert ledger.balance(session, buyer_available(buyer)) == 1_000
    assert _count(session, Transfer) == 2


def test_deposit_replayed_with_another_amount_is_a_conflict(session: Session) -> None:
    buyer, tx = new_address(), new_tx_hash()
    ledger.credit_deposit(session, buyer, 500, tx, 0)
    with pytest.raises(IdempotencyConflictError):
        ledger.credit_deposit(session, buyer, 501, tx, 0)
    assert ledger.balance(session, buyer_available(buyer)) == 500


@pytest.mark.parametrize(
    ("amount", "tx", "log_index", "error"),
    [
        (0, None, 0, InvalidAmountError),
        (-5, None, 0, InvalidAmountError),
        (1.5, None, 0, InvalidAmountError),
        (True, None, 0, InvalidAmountError),
        (10, "0x1234", 0, InvalidRequestError),
        (10, None, -1, InvalidRequestError),
    ],
)
def test_deposit_refuses_bad_input(
    session: Session, amount: object, tx: str | None, log_index: int, error: type[Exception]
) -> None:
    with pytest.raises(error):
        ledger.credit_deposit(session, new_address(), amount, tx or new_tx_hash(), log_index)  # type: ignore[arg-type]
    assert _count(session, Transfer) == 0


def test_deposit_refuses_a_bad_address(session: Session) -> None:
    with pytest.raises(InvalidAddressError):
        ledger.credit_deposit(session, "0xnothex", 10, new_tx_hash(), 0)


def test_uint256_amounts_stay_exact(session: Session) -> None:
    buyer, provider, job = new_address(), new_address(), new_job_id()
    huge = 2**255 + 12345
    ledger.credit_deposit(session, buyer, huge, new_tx_hash(), 0)
    ledger.place_hold(session, buyer, job, 2**200 + 1)
    ledger.settle_hold(session, job, charge=2**199 + 1, provider=provider, fee=2**64 + 3)
    session.commit()
    assert ledger.balance(session, buyer_available(buyer)) == huge - (2**199 + 1)
    assert ledger.balance(session, provider_earned(provider)) == 2**199 + 1 - (2**64 + 3)
    assert ledger.balance(session, PROTOCOL_FEES) == 2**64 + 3
    ledger.check_ledger(session)


# -- holds --------------------------------------------------------------------------------


def test_hold_moves_available_to_held(session: Session) -> None:
    buyer, job = funded_buyer(session, 1_000), new_job_id()
    hold = ledger.place_hold(session, buyer, job, 300)
    assert (hold.status, hold.amount, hold.buyer) == (HoldStatus.OPEN, 300, buyer)
    assert ledger.balance(session, buyer_available(buyer)) == 700
    assert ledger.balance(session, buyer_held(buyer)) == 300
    ledger.check_ledger(session)


def test_hold_beyond_available_is_refused_and_writes_nothing(session: Session) -> None:
    buyer = funded_buyer(session, 100)
    transfers_before = _count(session, Transfer)
    with pytest.raises(InsufficientFundsError) as raised:
        ledger.place_hold(session, buyer, new_job_id(), 101)
    assert (raised.value.available, raised.value.requested) == (100, 101)
    assert raised.value.account == buyer_available(buyer).name
    assert raised.value.status_code == 402
    assert _count(session, Transfer) == transfers_before
    assert _count(session, Hold) == 0
    assert ledger.balance(session, buyer_available(buyer)) == 100


def test_hold_for_an_unknown_buyer_is_insufficient_funds(session: Session) -> None:
    with pytest.raises(InsufficientFundsError):
        ledger.place_hold(session, new_address(), new_job_id(), 1)


def test_placing_the_same_hold_twice_returns_the_first(session: Session) -> None:
    buyer, job = funded_buyer(session, 1_000), new_job_id()
    first = ledger.place_hold(session, buyer, job, 300)
    again = ledger.place_hold(session, buyer, job, 300)
    assert again.id == first.id
    assert ledger.balance(session, buyer_held(buyer)) == 300
    with pytest.raises(IdempotencyConflictError):
        ledger.place_hold(session, buyer, job, 301)
    with pytest.raises(IdempotencyConflictError):
        ledger.place_hold(session, funded_buyer(session, 1_000), job, 300)


@pytest.mark.parametrize("job_id", ["", "has space", "x" * 65, "/slash"])
def test_hold_refuses_bad_job_ids(session: Session, job_id: str) -> None:
    buyer = funded_buyer(session, 10)
    with pytest.raises(InvalidRequestError):
        ledger.place_hold(session, buyer, job_id, 1)


# -- settling and releasing ---------------------------------------------------------------


def test_settle_pays_provider_and_fee_and_releases_the_rest(session: Session) -> None:
    buyer, provider, job = funded_buyer(session, 10_000), new_address(), new_job_id()
    ledger.place_hold(session, buyer, job, 1_000)
    hold = ledger.settle_hold(session, job, charge=600, provider=provider, fee=30)
    assert hold.status is HoldStatus.SETTLED
    assert (hold.charged, hold.fee, hold.provider) == (600, 30, provider)
    assert hold.closed_at is not None
    assert ledger.balance(session, buyer_available(buyer)) == 9_400
    assert ledger.balance(session, buyer_held(buyer)) == 0
    assert ledger.balance(session, provider_earned(provider)) == 570
    assert ledger.balance(session, PROTOCOL_FEES) == 30
    kinds = session.scalars(
        select(Transfer.kind).where(Transfer.job_id == job).order_by(Transfer.id)
    ).all()
    assert kinds == [TransferKind.HOLD, TransferKind.CHARGE, TransferKind.RELEASE]
    ledger.check_ledger(session)


@pytest.mark.parametrize(
    ("charge", "fee", "earned", "fees", "available"),
    [
        (1_000, 50, 950, 50, 0),  # the whole hold: no release
        (0, 0, 0, 0, 1_000),  # nothing charged: all released
        (40, 40, 0, 40, 960),  # all of it fee: no provider leg
        (40, 0, 40, 0, 960),  # no fee: no protocol leg
    ],
)
def test_settle_edge_cases(
    session: Session, charge: int, fee: int, earned: int, fees: int, available: int
) -> None:
    buyer, provider, job = funded_buyer(session, 1_000), new_address(), new_job_id()
    ledger.place_hold(session, buyer, job, 1_000)
    ledger.settle_hold(session, job, charge=charge, provider=provider, fee=fee)
    assert ledger.balance(session, provider_earned(provider)) == earned
    assert ledger.balance(session, PROTOCOL_FEES) == fees
    assert ledger.balance(session, buyer_available(buyer)) == available
    assert ledger.balance(session, buyer_held(buyer)) == 0
    ledger.check_ledger(session)


def test_settle_is_idempotent_and_refuses_other_figures(session: Session) -> None:
    buyer, provider, job = funded_buyer(session, 1_000), new_address(), new_job_id()
    ledger.place_hold(session, buyer, job, 500)
    first = ledger.settle_hold(session, job, charge=200, provider=provider, fee=10)
    again = ledger.settle_hold(session, job, charge=200, provider=provider.lower(), fee=10)
    assert again.id == first.id
    assert ledger.balance(session, provider_earned(provider)) == 190
    with pytest.raises(IdempotencyConflictError):
        ledger.settle_hold(session, job, charge=201, provider=provider, fee=10)
    with pytest.raises(HoldClosedError):
        ledger.release_hold(session, job)


def test_charge_beyond_the_hold_or_fee_beyond_the_charge_is_refused(session: Session) -> None:
    buyer, provider, job = funded_buyer(session, 1_000), new_address(), new_job_id()
    ledger.place_hold(session, buyer, job, 100)
    with pytest.raises(ChargeExceedsHoldError):
        ledger.settle_hold(session, job, charge=101, provider=provider, fee=0)
    with pytest.raises(ChargeExceedsHoldError):
        ledger.settle_hold(session, job, charge=10, provider=provider, fee=11)
    with pytest.raises(InvalidAmountError):
        ledger.settle_hold(session, job, charge=-1, provider=provider, fee=0)
    assert ledger.get_hold(session, job).status is HoldStatus.OPEN


def test_release_returns_everything_once(session: Session) -> None:
    buyer, job = funded_buyer(session, 1_000), new_job_id()
    ledger.place_hold(session, buyer, job, 400)
    hold = ledger.release_hold(session, job)
    assert hold.status is HoldStatus.RELEASED
    assert ledger.release_hold(session, job).id == hold.id
    assert ledger.balance(session, buyer_available(buyer)) == 1_000
    assert ledger.balance(session, buyer_held(buyer)) == 0
    with pytest.raises(HoldClosedError):
        ledger.settle_hold(session, job, charge=1, provider=new_address(), fee=0)
    ledger.check_ledger(session)


def test_unknown_jobs_have_no_hold(session: Session) -> None:
    with pytest.raises(HoldNotFoundError):
        ledger.release_hold(session, new_job_id())
    with pytest.raises(HoldNotFoundError):
        ledger.settle_hold(session, new_job_id(), charge=1, provider=new_address(), fee=0)
    with pytest.raises(HoldNotFoundError):
        ledger.get_hold(session, new_job_id())


# -- the double-entry rule ----------------------------------------------------------------


@pytest.mark.parametrize(
    "amounts",
    [[5, -4], [7], [1, 1, -1]],
    ids=["off-by-one", "one-leg", "three-legs-unbalanced"],
)
def test_unbalanced_transfers_are_refused_before_anything_is_written(
    session: Session, amounts: list[int]
) -> None:
    legs = [Leg(buyer_available(new_address()), amount) for amount in amounts]
    with pytest.raises(UnbalancedTransferError):
        ledger.post_transfer(
            session, kind=TransferKind.FEE, idempotency_key="unbalanced", legs=legs
        )
    session.flush()
    assert _count(session, Account) == 0
    assert _count(session, Transfer) == 0
    assert _count(session, Posting) == 0


def test_an_account_twice_in_one_transfer_is_refused(session: Session) -> None:
    account = buyer_available(new_address())
    with pytest.raises(UnbalancedTransferError):
        ledger.post_transfer(
            session,
            kind=TransferKind.FEE,
            idempotency_key="twice",
            legs=[Leg(account, 5), Leg(account, -5)],
        )


def test_zero_legs_are_refused(session: Session) -> None:
    with pytest.raises(InvalidAmountError):
        ledger.post_transfer(
            session,
            kind=TransferKind.FEE,
            idempotency_key="zero",
            legs=[Leg(buyer_available(new_address()), 0), Leg(PROTOCOL_FEES, 0)],
        )


def test_no_account_but_the_chain_contra_account_goes_negative(session: Session) -> None:
    buyer = funded_buyer(session, 10)
    with pytest.raises(InsufficientFundsError):
        ledger.post_transfer(
            session,
            kind=TransferKind.FEE,
            idempotency_key="overdraw",
            legs=[Leg(buyer_available(buyer), -11), Leg(PROTOCOL_FEES, 11)],
        )
    assert ledger.balance(session, buyer_available(buyer)) == 10


def test_the_journal_is_append_only(session_factory: sessionmaker[Session]) -> None:
    with session_scope(session_factory) as session:
        funded_buyer(session, 10)
    for statement in (
        "UPDATE ledger_postings SET amount = amount",
        "DELETE FROM ledger_postings",
        "UPDATE ledger_transfers SET job_id = 'x'",
        "DELETE FROM ledger_transfers",
    ):
        with (
            pytest.raises(DBAPIError, match="append-only"),
            session_scope(session_factory) as session,
        ):
            session.execute(text(statement))


def test_postgres_refuses_to_commit_an_unbalanced_transfer(postgres_url: str) -> None:
    """Defence in depth: even SQL that bypasses the service cannot commit unbalanced books."""
    engine: Engine = create_engine(postgres_url)
    try:
        conn = engine.connect()
        conn.begin()
        for statement in (
            "INSERT INTO ledger_accounts (name, owner_kind, bucket, balance, created_at) "
            "VALUES ('protocol:fees', 'protocol', 'fees', 0, now())",
            "INSERT INTO ledger_transfers (kind, idempotency_key, created_at) "
            "VALUES ('fee', 'raw', now())",
            "INSERT INTO ledger_postings (transfer_id, account_id, amount) "
            "SELECT t.id, a.id, 5 FROM ledger_transfers t, ledger_accounts a",
        ):
            conn.execute(text(statement))  # each is accepted: the check waits for COMMIT
        with pytest.raises(DBAPIError, match="unbalanced"):
            conn.commit()
        conn.close()
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM ledger_transfers")).scalar() == 0
    finally:
        engine.dispose()


def test_posting_a_key_again_returns_the_original(session: Session) -> None:
    buyer = funded_buyer(session, 100)
    legs = [Leg(buyer_available(buyer), -7), Leg(PROTOCOL_FEES, 7)]
    first = ledger.post_transfer(session, kind=TransferKind.FEE, idempotency_key="k", legs=legs)
    again = ledger.post_transfer(
        session, kind=TransferKind.FEE, idempotency_key="k", legs=list(reversed(legs))
    )
    assert again.id == first.id
    assert ledger.balance(session, PROTOCOL_FEES) == 7
    with pytest.raises(IdempotencyConflictError):
        ledger.post_transfer(session, kind=TransferKind.CHARGE, idempotency_key="k", legs=legs)


def test_check_ledger_notices_a_tampered_balance(session: Session) -> None:
    buyer = funded_buyer(session, 100)
    ledger.check_ledger(session)
    account = session.scalars(
        select(Account).where(Account.name == buyer_available(buyer).name)
    ).one()
    account.balance = 1_000_000
    session.flush()
    with pytest.raises(LedgerInconsistentError, match="stored balance"):
        ledger.check_ledger(session)


# -- reading ------------------------------------------------------------------------------


def test_balance_of_an_unknown_account_is_zero(session: Session) -> None:
    assert ledger.balance(session, buyer_available(new_address())) == 0
    assert ledger.balance(session, "nobody") == 0


def test_statement_of_a_buyer_and_a_provider(session: Session) -> None:
    buyer, provider = new_address(), new_address()
    ledger.credit_deposit(session, buyer, 1_000, new_tx_hash(), 0)
    ledger.credit_deposit(session, buyer, 500, new_tx_hash(), 2)
    charged_job, dropped_job, open_job = new_job_id(), new_job_id(), new_job_id()
    ledger.place_hold(session, buyer, charged_job, 300)
    ledger.settle_hold(session, charged_job, charge=200, provider=provider, fee=10)
    ledger.place_hold(session, buyer, dropped_job, 100)
    ledger.release_hold(session, dropped_job)
    ledger.place_hold(session, buyer, open_job, 50)

    mine = ledger.statement(session, buyer.lower())
    assert mine.owner == buyer
    assert (mine.available, mine.held, mine.earned) == (1_250, 50, 0)
    assert mine.balances == {"available": 1_250, "held": 50}
    assert (mine.deposited, mine.holds_placed, mine.charged, mine.released) == (
        1_500,
        450,
        200,
        200,
    )
    assert mine.withdrawn == 0
    assert mine.deposited - mine.charged - mine.withdrawn == mine.available + mine.held
    assert mine.lines[0].job_id == open_job  # newest first
    assert [line.transfer_id for line in mine.lines] == sorted(
        (line.transfer_id for line in mine.lines), reverse=True
    )
    assert len(ledger.statement(session, buyer, limit=2).lines) == 2

    theirs = ledger.statement(session, provider)
    assert (theirs.earned, theirs.available, theirs.held) == (190, 0, 0)
    assert [(line.kind, line.amount) for line in theirs.lines] == [(TransferKind.CHARGE, 190)]


def test_schemas_show_transfers_and_holds(session: Session) -> None:
    buyer, job = new_address(), new_job_id()
    deposit = ledger.credit_deposit(session, buyer, 10, new_tx_hash(), 0)
    shown = TransferRead.of(deposit)
    assert sorted((p.account, p.amount) for p in shown.postings) == sorted(
        [(CHAIN_ESCROW.name, -10), (buyer_available(buyer).name, 10)]
    )
    hold = HoldRead.model_validate(ledger.place_hold(session, buyer, job, 4))
    assert (hold.job_id, hold.amount, hold.status) == (job, 4, HoldStatus.OPEN)
    assert hold.created_at.utcoffset() is not None
