"""A buyer who takes back escrow the market already charged cannot stop settlement: the
epoch is built without that buyer (`market.settlement.coverage`), and an epoch the chain
refuses for it is discarded and built again (`service.discard_epoch`)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from market.buyers.service import buyer_statement
from market.chain.errors import FeeAboveContractLimitError
from market.chain.service import (
    open_chain,
    refuse_fee_above_limit,
    warn_if_withdrawals_outrun_epochs,
)
from market.config import Settings
from market.db import session_scope
from market.jobs.models import Receipt
from market.ledger import service as ledger
from market.settlement import service
from market.settlement.coverage import Shortfall, shortfalls
from market.settlement.models import Epoch, EpochLine, EpochStatus, LineKind
from market.settlement.tasks import close_epoch, watch_deposits
from protocol.chain.connection import advance_time
from protocol.chain.deploy import TESTNET
from protocol.chain.settlement import EpochBatch, SettlementClient
from protocol.chain.transactor import OnSent, Transactor
from tests.market.settlement.conftest import PARAMS, Market

DEPOSIT = 10_000


def _scene(market: Market) -> tuple[Transactor, Transactor, str, list[str], list[str]]:
    """An honest and a leaving buyer, each charged for two receipts of one provider."""
    honest, leaving = market.buyer(DEPOSIT), market.buyer(DEPOSIT)
    provider = market.provider()
    kept = [market.receipt(honest.address, provider, 1_000, 50) for _ in range(2)]
    held = [market.receipt(leaving.address, provider, 3_000, 150) for _ in range(2)]
    return honest, leaving, provider, kept, held


def _take_back_everything(market: Market, buyer: Transactor) -> None:
    """The buyer asks the contract for its whole escrow, charged part included, and takes it."""
    market.client.request_withdrawal(buyer, DEPOSIT)
    advance_time(market.client.w3, 61)
    market.client.withdraw(buyer)


def _epochs_of(market: Market, job_ids: list[str]) -> set[int | None]:
    with session_scope(market.sessions) as session:
        rows = session.scalars(select(Receipt.epoch).where(Receipt.job_id.in_(job_ids)))
        return set(rows)


def test_a_pending_withdrawal_that_is_ready_does_not_cover_a_debit(market: Market) -> None:
    honest, leaving, _, _, _ = _scene(market)
    market.client.request_withdrawal(leaving, DEPOSIT - 1_000)
    debits = {honest.address: 2_000, leaving.address: 6_000}

    # not usable before the batch lands: the escrow still covers it
    assert shortfalls(market.client, debits, margin_s=10) == []
    # usable within the margin: only what it leaves counts
    assert shortfalls(market.client, debits, margin_s=60) == [
        Shortfall(leaving.address, 6_000, 1_000)
    ]


def test_a_buyer_who_took_charged_escrow_is_left_out_and_the_rest_settle(
    market: Market,
) -> None:
    honest, leaving, provider, kept, held = _scene(market)
    _take_back_everything(market, leaving)
    watch_deposits(market.ctx())

    assert close_epoch(market.ctx()) == 1

    assert market.client.last_settled_epoch() == 1
    assert _epochs_of(market, kept) == {1}
    assert _epochs_of(market, held) == {None}  # still charged, waiting for a deposit
    assert market.client.escrow(honest.address) == DEPOSIT - 2_000
    assert market.client.earnings(provider) == 2 * 950
    with session_scope(market.sessions) as session:
        debits = session.scalars(
            select(EpochLine.address).where(EpochLine.epoch == 1, EpochLine.kind == LineKind.DEBIT)
        ).all()
        assert debits == [honest.address]
        assert ledger.balance(session, ledger.provider_earned(provider)) == 2 * 2_850

        # the 6,000 taken beyond the 4,000 the ledger left free is booked as owed
        assert ledger.balance(session, service.buyer_overdrawn(leaving.address)) == -6_000
        assert buyer_statement(session, leaving.address).owed == 6_000
        assert "overdrawn" not in buyer_statement(session, honest.address).balances
        assert _escrow_in_ledger(session, leaving.address) == 0
        ledger.check_ledger(session)

    # the buyer deposits again: the deposit pays the debt first, the next epoch settles it
    market.client.faucet(leaving, leaving.address, DEPOSIT)
    market.client.deposit(leaving, DEPOSIT)
    watch_deposits(market.ctx())
    with session_scope(market.sessions) as session:
        assert ledger.balance(session, ledger.buyer_available(leaving.address)) == 4_000
    assert close_epoch(market.ctx()) == 2
    assert _epochs_of(market, held) == {2}
    assert market.client.earnings(provider) == 2 * 950 + 2 * 2_850
    with session_scope(market.sessions) as session:
        assert ledger.balance(session, ledger.provider_earned(provider)) == 0
        assert ledger.balance(session, service.buyer_overdrawn(leaving.address)) == 0
        statement = buyer_statement(session, leaving.address)
        assert (statement.owed, statement.deposited) == (0, 2 * DEPOSIT)
        for buyer in (honest, leaving):  # the ledger matches the chain again, to the unit
            assert market.client.escrow(buyer.address) == _escrow_in_ledger(session, buyer.address)
        ledger.check_ledger(session)


def test_a_buyer_the_chain_covers_in_part_settles_its_oldest_receipts_that_fit(
    market: Market,
) -> None:
    honest, leaving, provider, kept, held = _scene(market)
    newest = market.receipt(leaving.address, provider, 500, 25)  # would fit, but is newer
    market.client.request_withdrawal(leaving, 6_000)  # leaves 4,000 of the 6,500 charged
    advance_time(market.client.w3, 61)
    market.client.withdraw(leaving)
    watch_deposits(market.ctx())

    assert close_epoch(market.ctx()) == 1

    assert _epochs_of(market, [*kept, held[0]]) == {1}
    assert _epochs_of(market, [held[1], newest]) == {None}  # oldest first: no skipping ahead
    assert market.client.escrow(leaving.address) == 4_000 - 3_000
    assert market.client.earnings(provider) == 2 * 950 + 2_850
    with session_scope(market.sessions) as session:
        lines = session.execute(
            select(EpochLine.address, EpochLine.amount).where(
                EpochLine.epoch == 1, EpochLine.kind == LineKind.DEBIT
            )
        ).all()
        assert sorted(lines) == sorted([(honest.address, 2_000), (leaving.address, 3_000)])
        assert buyer_statement(session, leaving.address).owed == 2_500
        assert market.client.escrow(leaving.address) == (
            _escrow_in_ledger(session, leaving.address)
            + ledger.balance(session, service.buyer_overdrawn(leaving.address))
            + 3_000
            + 500
        )
        ledger.check_ledger(session)

    # nothing more fits until the buyer deposits again
    assert close_epoch(market.ctx()) is None
    market.client.faucet(leaving, leaving.address, DEPOSIT)
    market.client.deposit(leaving, DEPOSIT)
    watch_deposits(market.ctx())
    assert close_epoch(market.ctx()) == 2
    assert _epochs_of(market, [held[1], newest]) == {2}
    with session_scope(market.sessions) as session:
        assert market.client.escrow(leaving.address) == _escrow_in_ledger(session, leaving.address)
        ledger.check_ledger(session)


def _escrow_in_ledger(session: Session, buyer: str) -> int:
    buckets = (ledger.buyer_available, ledger.buyer_held, service.buyer_withdrawing)
    return sum(ledger.balance(session, bucket(buyer)) for bucket in buckets)


def test_no_epoch_when_no_charged_buyer_is_covered(market: Market) -> None:
    _, leaving, _, _, held = _scene(market)
    with session_scope(market.sessions) as session:  # only the leaving buyer has receipts
        session.execute(delete(Receipt).where(Receipt.job_id.not_in(held)))
    _take_back_everything(market, leaving)

    assert close_epoch(market.ctx()) is None
    assert market.client.last_settled_epoch() == 0
    with session_scope(market.sessions) as session:
        assert session.scalar(select(func.count()).select_from(Epoch)) == 0


class WithdrawsBeforeTheBatch(SettlementClient):
    """A chain on which the leaving buyer takes its escrow between the epoch's build and
    its batch (the race the coverage check cannot close)."""

    leaving: Transactor
    raced = False

    def settle_epoch(
        self, sender: Transactor, batch: EpochBatch, on_sent: OnSent | None = None
    ) -> Any:
        if not self.raced:
            self.raced = True
            super().withdraw(self.leaving)
        return super().settle_epoch(sender, batch, on_sent)


def test_an_epoch_the_chain_refuses_is_discarded_and_built_again(market: Market) -> None:
    _, leaving, provider, kept, held = _scene(market)
    market.client.request_withdrawal(leaving, DEPOSIT)  # usable only after the margin
    racing = WithdrawsBeforeTheBatch(market.client.w3, market.client.deployment)
    racing.leaving = leaving
    advance_time(market.client.w3, 61)  # ...and now usable: the check counts it as gone
    # a build that did not see it coming: the epoch holds both buyers
    with session_scope(market.sessions) as session:
        epoch = service.open_epoch(session, _Blind(market.client.w3, market.client.deployment))
        assert epoch is not None
        assert epoch.number == 1
    assert _epochs_of(market, held) == {1}

    assert close_epoch(market.ctx(client=racing)) == 1  # refused, discarded, built again

    assert racing.raced
    assert market.client.last_settled_epoch() == 1
    assert _epochs_of(market, kept) == {1}
    assert _epochs_of(market, held) == {None}
    with session_scope(market.sessions) as session:
        epoch = session.get(Epoch, 1)
        assert epoch is not None
        assert epoch.status is EpochStatus.SETTLED
        assert epoch.receipt_count == 2
        assert "0x" + market.client.epoch_root(1).hex() == epoch.receipts_root
    assert market.client.earnings(provider) == 2 * 950


class _Blind(SettlementClient):
    """Sees no pending withdrawal (an epoch built before the request was made)."""

    def escrows_of(
        self, buyers: Sequence[str], block: int | None = None
    ) -> list[tuple[int, int, int]]:
        return [(escrow, 0, 0) for escrow, _, _ in super().escrows_of(buyers, block)]


def test_discarding_a_settled_epoch_changes_nothing(market: Market) -> None:
    _scene(market)
    assert close_epoch(market.ctx()) == 1
    with session_scope(market.sessions) as session:
        assert service.discard_epoch(session, market.client, 1) == 0
    with session_scope(market.sessions) as session:
        epoch = session.get(Epoch, 1)
        assert epoch is not None
        assert epoch.status is EpochStatus.SETTLED
        assert session.scalar(select(func.count()).where(Receipt.epoch == 1)) == 4


def test_a_withdrawal_delay_under_two_epochs_is_warned_about(
    market: Market, caplog: pytest.LogCaptureFixture
) -> None:
    delay = market.client.withdrawal_delay()
    assert delay == PARAMS.withdrawal_delay_s
    with caplog.at_level(logging.WARNING, logger="market.chain.service"):
        assert not warn_if_withdrawals_outrun_epochs(delay, delay // 2)
        assert caplog.messages == []
        assert warn_if_withdrawals_outrun_epochs(delay, delay // 2 + 1)
    assert "under two epochs" in caplog.messages[0]
    assert TESTNET.withdrawal_delay_s >= 2 * Settings().epoch_seconds  # the defaults agree


def test_a_fee_above_the_contracts_limit_is_refused_at_start(
    market: Market, tmp_path: Path
) -> None:
    limit = market.client.max_fee_bps()
    assert limit == TESTNET.max_fee_bps
    refuse_fee_above_limit(limit, limit)
    with pytest.raises(FeeAboveContractLimitError, match=f"at most {limit} bps"):
        refuse_fee_above_limit(limit + 1, limit)
    # the embedded chain deploys TESTNET, so opening it with too high a fee fails at once
    settings = Settings(
        database_url=f"sqlite:///{tmp_path}/unused.db", var_dir=tmp_path, protocol_fee_bps=limit + 1
    )
    with pytest.raises(FeeAboveContractLimitError):
        open_chain(settings)
