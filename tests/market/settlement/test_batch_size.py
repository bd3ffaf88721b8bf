"""An epoch names at most so many buyers and providers, so that its batch always fits in a
block; the receipts of the others settle in the epochs the same close builds next."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from market.db import session_scope
from market.jobs.models import Receipt
from market.ledger import service as ledger
from market.settlement import service
from market.settlement.batch_size import party_cap, select_parties
from market.settlement.models import Epoch, EpochStatus
from market.settlement.repository import SettlementRepository
from market.settlement.tasks import close_epoch
from protocol.chain.connection import is_embedded
from tests.market.settlement.conftest import Market


def test_the_cap_is_the_setting_or_what_half_a_block_holds() -> None:
    assert party_cap(400, 30_000_000) == 400
    assert party_cap(400, 1_000_000) == 16  # 500k gas / 30k per party
    assert party_cap(400, 10_000) == 2  # never below one buyer and one provider


def test_pairs_are_taken_in_order_until_the_cap() -> None:
    pairs = [("b1", "p1"), ("b2", "p2"), ("b1", "p2"), ("b3", "p3"), ("b2", "p1")]
    assert select_parties(pairs, 6) is None  # everyone fits
    # b3 and p3 would make five; the later (b2, p1) still fits among the first four
    assert select_parties(pairs, 4) == ({"b1", "b2"}, {"p1", "p2"})
    assert select_parties(pairs, 3) == ({"b1"}, {"p1", "p2"})
    assert select_parties([("b1", "p1"), ("b2", "p2")], 2) == ({"b1"}, {"p1"})


def _scene(market: Market) -> tuple[list[str], list[str], list[str]]:
    """Three buyers each served by each of three providers: nine receipts, six parties."""
    buyers = [market.buyer(100_000).address for _ in range(3)]
    providers = [market.provider() for _ in range(3)]
    jobs = [
        market.receipt(buyer, provider, 1_000 + 10 * i + j, 50)
        for i, buyer in enumerate(buyers)
        for j, provider in enumerate(providers)
    ]
    return buyers, providers, jobs


def _settled_by_epoch(market: Market) -> dict[int, int]:
    with session_scope(market.sessions) as session:
        epochs = session.scalars(select(Epoch).order_by(Epoch.number)).all()
        assert all(epoch.status is EpochStatus.SETTLED for epoch in epochs)
        repo = SettlementRepository(session)
        for epoch in epochs:
            assert len(repo.lines_of(epoch.number)) <= 4
        return {epoch.number: epoch.receipt_count for epoch in epochs}


def _assert_ledger_matches_chain(market: Market, buyers: list[str], providers: list[str]) -> None:
    client = market.client
    with session_scope(market.sessions) as session:
        ledger.check_ledger(session)
        for buyer in buyers:
            assert client.escrow(buyer) == sum(
                ledger.balance(session, f"buyer:{buyer}:{bucket}")
                for bucket in ("available", "held", "withdrawing")
            )
        for provider in providers:
            assert client.earnings(provider) == ledger.balance(
                session, service.provider_settled(provider)
            )
            assert ledger.balance(session, ledger.provider_earned(provider)) == 0


def test_a_close_settles_full_epochs_back_to_back(market: Market) -> None:
    buyers, providers, jobs = _scene(market)

    last = close_epoch(market.ctx(epoch_max_parties=4))

    counts = _settled_by_epoch(market)
    assert last == max(counts) == market.client.last_settled_epoch()
    assert len(counts) >= 3  # six parties, at most four a batch, each pair wholly in one
    assert sum(counts.values()) == len(jobs)
    with session_scope(market.sessions) as session:
        first = session.get(Receipt, jobs[0])
        assert first is not None
        assert first.epoch == 1  # the oldest pair goes first
    _assert_ledger_matches_chain(market, buyers, providers)


def test_the_chains_block_gas_limit_caps_the_epoch(market: Market) -> None:
    if is_embedded(market.client.w3):
        pytest.skip("the in-process chain's block gas limit cannot be changed")
    w3 = market.client.w3
    limit = market.client.block_gas_limit()
    buyers, providers, jobs = _scene(market)
    w3.provider.make_request("anvil_setBlockGasLimit", [hex(250_000)])  # type: ignore[arg-type]
    w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]
    try:
        assert party_cap(400, market.client.block_gas_limit()) == 4
        assert close_epoch(market.ctx()) is not None
    finally:
        w3.provider.make_request("anvil_setBlockGasLimit", [hex(limit)])  # type: ignore[arg-type]
        w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]
    assert sum(_settled_by_epoch(market).values()) == len(jobs)
    _assert_ledger_matches_chain(market, buyers, providers)
