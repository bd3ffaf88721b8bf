"""An epoch names the settlement transaction it waits on in the mempool, on anvil (automine
off), on SQLite and PostgreSQL; once booked it names the transaction that was mined."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from eth_typing import HexStr

from market.db import session_scope, utcnow
from market.settlement import service
from market.settlement.models import EpochStatus
from market.settlement.schemas import EpochDetail, PendingTransaction
from market.settlement.tasks import close_epoch
from protocol.chain import errors
from tests.market.settlement.conftest import Market
from tests.support.chain import automine_off, mining_once_replaced, pooled, rpc


@pytest.fixture
def chain_url(anvil_url: str) -> str:
    """Anvil only: the in-process chain mines every transaction at once."""
    return anvil_url


@pytest.fixture
def scene(market: Market) -> Market:
    """One receipt to settle, and an operator that waits 1 s for a receipt."""
    market.receipt(market.buyer(1_000_000).address, market.provider(), 1_000, 50)
    market.chain.operator.receipt_timeout_s = 1
    return market


def _epoch(market: Market) -> EpochDetail:
    with session_scope(market.sessions) as session:
        return service.get_epoch(session, 1)


def _close_in_vain(market: Market) -> PendingTransaction:
    """A close whose settlement is still in the pool when the operator stops waiting (as
    after a crash mid-wait): the transaction epoch 1 then waits on, as it shows it."""
    with pytest.raises(errors.TransactionFailed, match="not mined in time"):
        close_epoch(market.ctx())
    epoch = _epoch(market)
    assert epoch.status is EpochStatus.SUBMITTED
    assert epoch.tx_hash is None
    assert epoch.pending_tx is not None
    return epoch.pending_tx


def _waiting(market: Market) -> dict[str, Any]:
    (waiting,) = pooled(market.client.w3, market.chain.operator.address)
    return waiting


def test_a_submitted_epoch_names_the_transaction_waiting_in_the_mempool(scene: Market) -> None:
    w3 = scene.client.w3
    before = utcnow()
    with automine_off(w3):
        pending = _close_in_vain(scene)
        waiting = _waiting(scene)
        assert pending.tx_hash == waiting["hash"]
        assert pending.nonce == int(waiting["nonce"], 16)
        assert pending.max_fee_per_gas == int(waiting["maxFeePerGas"], 16) > 0
        assert pending.max_priority_fee_per_gas == int(waiting["maxPriorityFeePerGas"], 16)
        assert before <= pending.sent_at <= utcnow()
        with session_scope(scene.sessions) as session:
            (listed,) = service.list_epochs(session)
        assert listed.pending_tx == pending
        rpc(w3, "evm_mine")

    assert close_epoch(scene.ctx()) == 1  # booked, nothing sent again
    epoch = _epoch(scene)
    assert epoch.status is EpochStatus.SETTLED
    assert epoch.tx_hash == pending.tx_hash
    assert epoch.block == w3.eth.get_transaction_receipt(HexStr(pending.tx_hash))["blockNumber"]
    assert epoch.pending_tx is None


def test_a_replacement_is_what_the_epoch_waits_on_and_then_books(
    scene: Market, monkeypatch: pytest.MonkeyPatch
) -> None:
    w3, operator = scene.client.w3, scene.chain.operator
    monkeypatch.setattr(service, "RESUBMIT_AFTER", timedelta(0))
    with automine_off(w3):
        first = _close_in_vain(scene)
        replacement = _close_in_vain(scene)
        assert replacement.tx_hash == _waiting(scene)["hash"] != first.tx_hash
        assert replacement.nonce == first.nonce
        assert replacement.max_fee_per_gas >= first.max_fee_per_gas * 125 // 100
        assert replacement.sent_at >= first.sent_at

        operator.receipt_timeout_s = 10
        with mining_once_replaced(w3, operator.address, replacement.tx_hash):
            assert close_epoch(scene.ctx()) == 1  # a third send, mined and booked at once

    epoch = _epoch(scene)
    mined = w3.eth.get_transaction_by_block(epoch.block or 0, 0)
    assert epoch.status is EpochStatus.SETTLED
    assert epoch.tx_hash == "0x" + bytes(mined["hash"]).hex()
    assert epoch.tx_hash not in (first.tx_hash, replacement.tx_hash)
    assert mined["nonce"] == first.nonce
    assert w3.eth.get_transaction_count(operator.account.address) == first.nonce + 1
    assert epoch.pending_tx is None
