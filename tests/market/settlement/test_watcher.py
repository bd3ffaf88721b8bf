"""The deposit watcher against the embedded chain and anvil, on SQLite and PostgreSQL."""

from __future__ import annotations

from market.buyers.service import get_buyer
from market.db import session_scope
from market.ledger import service as ledger
from market.settlement import service
from market.settlement.repository import SettlementRepository
from market.settlement.tasks import watch_deposits
from protocol.chain.connection import advance_time
from tests.market.settlement.conftest import Market


def test_deposit_credited_after_confirmations_once(market: Market) -> None:
    buyer = market.account()
    market.client.faucet(buyer, buyer.address, 5_000)
    market.client.deposit(buyer, 5_000)
    ctx = market.ctx(confirmations=2)
    assert watch_deposits(ctx) == 0
    with session_scope(market.sessions) as session:
        assert ledger.balance(session, ledger.buyer_available(buyer.address)) == 0
    advance_time(market.client.w3, 1)
    advance_time(market.client.w3, 1)
    assert watch_deposits(ctx) == 1
    assert watch_deposits(ctx) == 0
    with session_scope(market.sessions) as session:
        assert ledger.balance(session, ledger.buyer_available(buyer.address)) == 5_000
        assert get_buyer(session, buyer.address).address == buyer.address
        ledger.check_ledger(session)


def test_rescanning_blocks_credits_nothing_twice(market: Market) -> None:
    buyer = market.buyer(3_000)
    with session_scope(market.sessions) as session:  # rewind the cursor to the deployment
        cursor = SettlementRepository(session).lock_cursor(service.CHAIN_CURSOR, 0)
        cursor.position = market.client.deployment.block
    watch_deposits(market.ctx())
    with session_scope(market.sessions) as session:
        assert ledger.balance(session, ledger.buyer_available(buyer.address)) == 3_000


def test_withdrawal_request_takes_funds_out_of_available(market: Market) -> None:
    buyer = market.buyer(3_000)
    market.client.request_withdrawal(buyer, 1_000)
    watch_deposits(market.ctx())
    with session_scope(market.sessions) as session:
        assert ledger.balance(session, ledger.buyer_available(buyer.address)) == 2_000
        assert ledger.balance(session, service.buyer_withdrawing(buyer.address)) == 1_000
    market.client.request_withdrawal(buyer, 400)  # replaces the pending request
    advance_time(market.client.w3, 61)
    market.client.withdraw(buyer)
    watch_deposits(market.ctx())
    with session_scope(market.sessions) as session:
        assert ledger.balance(session, ledger.buyer_available(buyer.address)) == 2_600
        assert ledger.balance(session, service.buyer_withdrawing(buyer.address)) == 0
        assert market.client.escrow(buyer.address) == 2_600
        ledger.check_ledger(session)
