"""The ledger against the chain (`market.settlement.reconcile`), and the watcher's booking of
earnings and fees leaving the contract, on the embedded chain and anvil, SQLite and
PostgreSQL."""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from types import SimpleNamespace

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from market import cli
from market.config import get_settings
from market.db import session_scope
from market.jobs.models import Receipt
from market.ledger import service as ledger
from market.metrics import MarketCollector
from market.routing.table import RoutingTable
from market.settlement import service
from market.settlement.models import ChainReconciliation
from market.settlement.reconcile import Difference, Reconciliation, reconcile
from market.settlement.repository import SettlementRepository
from market.settlement.tasks import close_epoch, reconcile_chain, watch_deposits
from protocol.chain.connection import advance_time, is_embedded
from protocol.chain.transactor import Transactor
from tests.market.settlement.conftest import Market


def _provider(market: Market) -> Transactor:
    provider = market.account()
    market.client.register_provider(provider, secrets.token_bytes(32))
    return provider


def _check(market: Market) -> Reconciliation | None:
    with session_scope(market.sessions) as session:
        return reconcile(session, market.client)


def test_nothing_is_compared_before_the_watcher_booked_a_block(market: Market) -> None:
    assert _check(market) is None
    assert reconcile_chain(market.ctx()) is None


def test_the_books_agree_through_deposits_charges_settlement_and_every_withdrawal(
    market: Market,
) -> None:
    alice, bob = market.buyer(10_000), market.buyer(4_000)
    provider = _provider(market)
    market.receipt(alice.address, provider.address, 3_000, 300)
    market.receipt(bob.address, provider.address, 1_000, 100)

    unsettled = reconcile_chain(market.ctx())  # charged at the market, not yet on-chain
    assert unsettled is not None
    assert unsettled.agrees
    assert unsettled.accounts_compared
    assert (unsettled.holdings, unsettled.buyers, unsettled.providers) == (14_000, 2, 1)

    assert close_epoch(market.ctx()) == 1
    market.client.request_withdrawal(alice, 2_000)
    advance_time(market.client.w3, 61)
    market.client.withdraw(alice)
    market.client.withdraw_earnings(provider)
    treasury = market.account().address
    market.client.withdraw_fees(market.chain.operator, treasury)
    assert watch_deposits(market.ctx()) == 4  # request, withdrawal, earnings, fees

    with session_scope(market.sessions) as session:
        assert ledger.balance(session, service.provider_settled(provider.address)) == 0
        assert ledger.balance(session, service.PROTOCOL_SETTLED_FEES) == 0
        assert -ledger.balance(session, ledger.CHAIN_ESCROW) == 14_000 - 2_000 - 3_600 - 400
    result = reconcile_chain(market.ctx())
    assert result is not None
    assert result.agrees
    assert (result.chain_epoch, result.ledger_epoch) == (1, 1)
    assert result.holdings == 8_000
    assert [e for e, _, _ in market.client.escrows_of([alice.address, bob.address])] == [
        5_000,
        3_000,
    ]
    assert market.client.payment_balance(treasury) == 400
    with session_scope(market.sessions) as session:
        stored = session.scalars(select(ChainReconciliation)).all()
    assert [(r.differences, r.accounts_compared) for r in stored] == [(0, True), (0, True)]
    assert stored[-1].block == result.block


def test_a_payout_waits_until_its_settlement_is_booked(market: Market) -> None:
    buyer = market.buyer(5_000)
    provider = _provider(market)
    market.receipt(buyer.address, provider.address, 2_000, 200)
    with session_scope(market.sessions) as session:  # settled on-chain, not booked yet
        epoch = service.open_epoch(session, market.client)
        assert epoch is not None
    with session_scope(market.sessions) as session:
        batch = service.begin_submission(session, market.client, 1)
        assert batch is not None
    market.client.settle_epoch(market.chain.operator, batch)
    payout = market.client.withdraw_earnings(provider)
    late = market.account()  # a deposit after the payout, in a later block
    market.client.faucet(late, late.address, 700)
    market.client.deposit(late, 700)

    assert watch_deposits(market.ctx()) == 0
    with session_scope(market.sessions) as session:
        position = SettlementRepository(session).cursor_position(service.CHAIN_CURSOR)
        assert position == payout["blockNumber"]  # every block before the payout is booked
        assert ledger.balance(session, ledger.buyer_available(late.address)) == 0
    between = _check(market)
    assert between is not None
    assert (between.chain_epoch, between.ledger_epoch) == (1, 0)
    assert not between.accounts_compared  # a settlement between the two: totals only
    assert between.agrees

    with session_scope(market.sessions) as session:
        service.record_settlement(session, market.client, 1)
    assert watch_deposits(market.ctx()) == 2
    with session_scope(market.sessions) as session:
        assert ledger.balance(session, service.provider_settled(provider.address)) == 0
        assert ledger.balance(session, ledger.buyer_available(late.address)) == 700
    after = _check(market)
    assert after is not None
    assert after.accounts_compared
    assert after.agrees


def test_a_ledger_that_strays_from_the_chain_is_caught_and_kept(market: Market) -> None:
    buyer = market.buyer(5_000)
    provider = _provider(market)
    market.receipt(buyer.address, provider.address, 1_000, 100)
    stranger = market.account()
    market.client.faucet(stranger, market.client.deployment.settlement, 123)  # sent directly
    watch_deposits(market.ctx())  # the check reads the chain where the watcher has got to
    with session_scope(market.sessions) as session:  # a deposit the chain never saw
        ledger.credit_deposit(session, buyer.address, 50, "0x" + "ab" * 32, 0)

    result = reconcile_chain(market.ctx())
    assert result is not None
    assert not result.agrees
    assert result.token_surplus == 123
    assert result.differences == [
        Difference("contract holdings (escrow + earnings + accrued fees)", 5_000, 5_050),
        Difference(f"escrow of {buyer.address}", 5_000, 5_050),
        Difference("total escrow", 5_000, 5_050),
    ]
    with session_scope(market.sessions) as session:
        row = session.scalars(select(ChainReconciliation)).one()
        assert row.differences == 3
        assert json.loads(row.detail)[1] == {
            "what": f"escrow of {buyer.address}",
            "expected": "5000",
            "booked": "5050",
        }


def test_earned_balances_are_checked_against_the_unsettled_receipts(market: Market) -> None:
    buyer = market.buyer(5_000)
    provider = _provider(market)
    market.receipt(buyer.address, provider.address, 1_000, 100)
    with session_scope(market.sessions) as session:  # voided, its charge never reversed
        session.scalars(select(Receipt)).one().check_status = "void"
    result = _check(market)
    assert result is not None
    earned = f"earned by {provider.address} (unsettled receipts' charges less fees)"
    assert Difference(earned, 0, 900) in result.differences
    assert Difference("protocol fees (unsettled receipts' fees)", 0, 100) in result.differences
    assert Difference(f"escrow of {buyer.address}", 5_000, 4_000) in result.differences


def test_the_command_prints_the_check_and_exits_1_on_a_difference(
    market: Market, database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if is_embedded(market.client.w3):
        pytest.skip("the command reaches a chain over RPC; the embedded one lives in a process")
    deployment = tmp_path / "deployment.json"
    market.client.deployment.save(deployment)
    monkeypatch.setenv("MARKET_DATABASE_URL", database_url)
    monkeypatch.setenv("MARKET_CHAIN_RPC_URL", market.client.w3.provider.endpoint_uri)  # type: ignore[attr-defined]
    monkeypatch.setenv("MARKET_DEPLOYMENT_FILE", str(deployment))
    get_settings.cache_clear()
    try:
        runner = CliRunner()
        before = runner.invoke(cli.app, ["chain", "reconcile"])
        assert before.exit_code == 0, before.output
        assert "booked no block yet" in before.output
        buyer = market.buyer(2_000)
        agreed = runner.invoke(cli.app, ["chain", "reconcile"])
        assert agreed.exit_code == 0, agreed.output
        assert "the ledger agrees with the chain" in agreed.output
        assert "1 buyers" in agreed.output
        with session_scope(market.sessions) as session:
            ledger.credit_deposit(session, buyer.address, 5, "0x" + "cd" * 32, 0)
        differs = runner.invoke(cli.app, ["chain", "reconcile"])
        assert differs.exit_code == 1
        assert f"escrow of {buyer.address}" in differs.output
        assert "2005" in differs.output
    finally:
        get_settings.cache_clear()


def test_the_last_check_is_on_metrics(market: Market) -> None:
    runtime = SimpleNamespace(sessions=market.sessions, routing=RoutingTable())
    assert "market_reconciliation_differences" not in _gauges(runtime)
    buyer = market.buyer(1_000)
    reconcile_chain(market.ctx())
    gauges = _gauges(runtime)
    assert gauges["market_reconciliation_differences"] == 0
    assert gauges["market_reconciliation_accounts_compared"] == 1
    assert 0 <= gauges["market_reconciliation_age_seconds"] < 60
    with session_scope(market.sessions) as session:
        ledger.credit_deposit(session, buyer.address, 5, "0x" + "ef" * 32, 0)
    reconcile_chain(market.ctx())
    assert _gauges(runtime)["market_reconciliation_differences"] == 3


def _gauges(runtime: object) -> dict[str, float]:
    collector = MarketCollector(lambda: runtime)  # type: ignore[arg-type,return-value]
    return {
        family.name: family.samples[0].value
        for family in collector.collect()
        if family.samples and not family.samples[0].labels
    }
