"""An epoch names the settlement transaction it waits on in the mempool, on anvil (automine
off), on SQLite and PostgreSQL; once booked it names the transaction that was mined. The API
and `market epoch list/show` show both."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from eth_typing import HexStr
from typer.testing import CliRunner

from market import cli
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


def test_the_epoch_commands_show_the_waiting_then_the_mined_transaction(
    scene: Market, cli_database: None
) -> None:
    runner = CliRunner()
    w3 = scene.client.w3
    with automine_off(w3):
        pending = _close_in_vain(scene)
        listed = runner.invoke(cli.app, ["epoch", "list"])
        assert listed.exit_code == 0, listed.output
        assert "submitted" in listed.output.splitlines()[3]
        assert pending.tx_hash in listed.output
        shown = runner.invoke(cli.app, ["epoch", "show", "1"])
        assert shown.exit_code == 0, shown.output
        assert f"waiting on {pending.tx_hash}: nonce {pending.nonce}, max fee" in shown.output
        rpc(w3, "evm_mine")
    assert close_epoch(scene.ctx()) == 1

    shown = runner.invoke(cli.app, ["epoch", "show", "1"])
    assert shown.exit_code == 0, shown.output
    epoch = _epoch(scene)
    assert f"epoch 1: settled, 1 receipts, root {epoch.receipts_root}" in shown.output
    assert "debit 1000 = credit 950 + fee 50 base units" in shown.output
    assert f"settled by {pending.tx_hash} in block {epoch.block}" in shown.output
    assert "waiting" not in shown.output
    for line in epoch.lines:
        assert f"{line.kind}" in shown.output
        assert line.address in shown.output
    assert {line.kind for line in epoch.lines} >= {"debit", "credit"}

    listed = runner.invoke(cli.app, ["epoch", "list"])
    assert listed.exit_code == 0, listed.output
    assert "settled" in listed.output
    assert pending.tx_hash in listed.output
    earlier = runner.invoke(cli.app, ["epoch", "list", "--before", "1"])
    assert earlier.exit_code == 0, earlier.output
    assert pending.tx_hash not in earlier.output
    missing = runner.invoke(cli.app, ["epoch", "show", "2"])
    assert missing.exit_code == 1
    assert "epoch_not_found: no epoch 2" in missing.output
