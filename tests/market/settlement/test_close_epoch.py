"""Epoch close against the embedded chain and anvil, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select

from market.db import session_scope
from market.jobs.models import Receipt
from market.ledger import service as ledger
from market.settlement import service, tasks
from market.settlement.errors import EpochRootMismatchError
from market.settlement.models import Epoch, EpochStatus
from market.settlement.tasks import close_epoch
from protocol.chain.connection import is_embedded
from protocol.chain.settlement import EpochBatch, SettlementClient
from protocol.chain.transactor import OnSent, Transactor
from protocol.merkle import verify
from tests.market.settlement.conftest import Market


class CrashAfterSubmit(SettlementClient):
    """A client whose process 'dies' right after the settlement tx is mined."""

    def settle_epoch(
        self, sender: Transactor, batch: EpochBatch, on_sent: OnSent | None = None
    ) -> Any:
        super().settle_epoch(sender, batch, on_sent)
        raise RuntimeError("crashed after submitting")


def _settle_scene(market: Market) -> tuple[list[str], list[str], list[str]]:
    buyers = [market.buyer(1_000_000).address for _ in range(2)]
    providers = [market.provider() for _ in range(2)]
    jobs = [
        market.receipt(buyers[i % 2], providers[(i // 2) % 2], 1_000 + 37 * i, 50 + i)
        for i in range(7)
    ]
    return buyers, providers, jobs


def _epoch(market: Market, number: int) -> Epoch:
    with session_scope(market.sessions) as session:
        epoch = session.get(Epoch, number)
        assert epoch is not None
        return epoch


def test_close_epoch_settles_and_ledger_matches_chain(market: Market) -> None:
    buyers, providers, jobs = _settle_scene(market)
    assert close_epoch(market.ctx()) == 1
    epoch = _epoch(market, 1)
    assert epoch.status is EpochStatus.SETTLED
    assert epoch.tx_hash is not None
    assert epoch.block is not None
    assert epoch.receipt_count == 7
    assert epoch.total_debit == epoch.total_credit + epoch.fee
    client = market.client
    assert client.last_settled_epoch() == 1
    assert "0x" + client.epoch_root(1).hex() == epoch.receipts_root
    with session_scope(market.sessions) as session:
        ledger.check_ledger(session)
        for b in buyers:
            mine = sum(
                ledger.balance(session, f"buyer:{b}:{bucket}")
                for bucket in ("available", "held", "withdrawing")
            )
            assert client.escrow(b) == mine
        for p in providers:
            assert client.earnings(p) == ledger.balance(session, service.provider_settled(p))
            assert ledger.balance(session, ledger.provider_earned(p)) == 0
        assert client.totals().accrued_fees == ledger.balance(
            session, service.PROTOCOL_SETTLED_FEES
        )
        for job_id in jobs:
            proof = service.receipt_proof(session, job_id)
            leaf = bytes.fromhex(proof.receipt_hash[2:])
            siblings = [bytes.fromhex(p[2:]) for p in proof.proof]
            assert verify(bytes.fromhex(proof.root[2:]), leaf, siblings)
            assert client.verify_receipt(1, leaf, siblings)
        indexes = session.scalars(select(Receipt.leaf_index).order_by(Receipt.leaf_index)).all()
        assert indexes == list(range(7))

    nonce = client.w3.eth.get_transaction_count(market.chain.operator.account.address)
    assert close_epoch(market.ctx()) is None  # nothing new: no epoch, no tx
    assert client.w3.eth.get_transaction_count(market.chain.operator.account.address) == nonce

    market.receipt(buyers[0], providers[0], 500, 25)
    assert close_epoch(market.ctx()) == 2
    assert _epoch(market, 2).receipt_count == 1


def test_empty_epoch_is_not_submitted(market: Market) -> None:
    assert close_epoch(market.ctx()) is None
    assert market.client.last_settled_epoch() == 0
    with session_scope(market.sessions) as session:
        assert service.list_epochs(session) == []


def test_crash_after_submit_is_recorded_without_second_tx(market: Market) -> None:
    _settle_scene(market)
    crashing = CrashAfterSubmit(market.client.w3, market.client.deployment)
    with pytest.raises(RuntimeError, match="crashed"):
        close_epoch(market.ctx(client=crashing))
    assert _epoch(market, 1).status is EpochStatus.SUBMITTED
    assert market.client.last_settled_epoch() == 1
    nonce = market.client.w3.eth.get_transaction_count(market.chain.operator.account.address)
    assert close_epoch(market.ctx()) == 1
    assert (
        market.client.w3.eth.get_transaction_count(market.chain.operator.account.address) == nonce
    )
    epoch = _epoch(market, 1)
    assert epoch.status is EpochStatus.SETTLED
    assert epoch.tx_hash is not None  # found from the EpochSettled event
    with session_scope(market.sessions) as session:
        ledger.check_ledger(session)


def test_replayed_epoch_is_not_resubmitted(market: Market) -> None:
    _settle_scene(market)
    assert close_epoch(market.ctx()) == 1
    with session_scope(market.sessions) as session:  # as if the last commit had been lost
        epoch = session.get(Epoch, 1)
        assert epoch is not None
        epoch.status = EpochStatus.PENDING
    nonce = market.client.w3.eth.get_transaction_count(market.chain.operator.account.address)
    assert close_epoch(market.ctx()) == 1
    assert (
        market.client.w3.eth.get_transaction_count(market.chain.operator.account.address) == nonce
    )
    assert _epoch(market, 1).status is EpochStatus.SETTLED


def test_other_root_on_chain_is_a_loud_error(market: Market) -> None:
    _settle_scene(market)
    with session_scope(market.sessions) as session:
        assert service.open_epoch(session, market.client) is not None
    market.client.settle_epoch(
        market.chain.operator,
        EpochBatch(epoch=1, receipts_root=b"\x01" * 32, receipt_count=0, fee=0),
    )
    with pytest.raises(EpochRootMismatchError):
        close_epoch(market.ctx())
    assert _epoch(market, 1).status is not EpochStatus.SETTLED


def test_a_settlement_is_booked_only_once_buried_and_a_reorg_before_that_is_resent(
    market: Market, monkeypatch: pytest.MonkeyPatch
) -> None:
    w3 = market.client.w3
    if is_embedded(w3):
        pytest.skip("the in-process chain cannot reorganise; it books at once")
    monkeypatch.setattr(tasks, "CONFIRMATION_WAIT_S", 0.0)
    _, providers, _ = _settle_scene(market)
    ctx = market.ctx(confirmations=2)
    before = w3.provider.make_request("evm_snapshot", [])["result"]  # type: ignore[arg-type]

    # mined, but no block on top yet: the ledger does not book it
    assert close_epoch(ctx) is None
    assert market.client.last_settled_epoch() == 1
    assert _epoch(market, 1).status is EpochStatus.SUBMITTED
    with session_scope(market.sessions) as session:
        assert ledger.balance(session, service.provider_settled(providers[0])) == 0

    # the chain reorganises the settlement away: the epoch is sent again, not skipped
    w3.provider.make_request("evm_revert", [before])  # type: ignore[arg-type]
    assert market.client.last_settled_epoch() == 0
    monkeypatch.setattr(service, "RESUBMIT_AFTER", timedelta(0))
    assert close_epoch(ctx) is None
    assert market.client.last_settled_epoch() == 1

    # two blocks later the next close books it
    for _ in range(2):
        w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]
    assert close_epoch(ctx) == 1
    assert _epoch(market, 1).status is EpochStatus.SETTLED
    with session_scope(market.sessions) as session:
        ledger.check_ledger(session)
        for provider in providers:
            settled = ledger.balance(session, service.provider_settled(provider))
            assert market.client.earnings(provider) == settled > 0
