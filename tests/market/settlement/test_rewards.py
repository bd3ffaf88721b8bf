"""Network-token rewards settled with an epoch, on the embedded chain (market/rewards)."""

from __future__ import annotations

import secrets

import pytest
from sqlalchemy import update

from market.config import Settings
from market.db import session_scope
from market.jobs.models import Receipt
from market.rewards.rule import efficiency_multiplier, largest_remainder
from market.rewards.service import FORFEITED
from market.settlement import service
from market.settlement.tasks import TaskContext, close_epoch
from protocol.chain.connection import EMBEDDED
from tests.market.settlement.conftest import PARAMS, Market

EMBEDDED_ONLY = pytest.mark.parametrize("chain_url", [EMBEDDED])
STAKE = PARAMS.min_provider_stake


def _staked(market: Market) -> str:
    provider = market.account()
    market.client.register_provider(provider, secrets.token_bytes(32))
    market.client.transfer_network(market.chain.operator, provider.address, STAKE)
    market.client.stake(provider, STAKE)
    return provider.address


def _ctx(market: Market, pool: int) -> TaskContext:
    return TaskContext(
        Settings(confirmations=0, reward_pool_per_epoch=pool), market.sessions, market.chain
    )


def _measure(market: Market, job_id: str, energy_mj: int) -> None:
    with session_scope(market.sessions) as session:
        session.execute(
            update(Receipt)
            .where(Receipt.job_id == job_id)
            .values(energy_method="measured", energy_mj=energy_mj)
        )


def test_largest_remainder_sums_exactly_to_the_pool() -> None:
    shares = largest_remainder(100, {"a": 1, "b": 1, "c": 1})
    assert shares == {"a": 34, "b": 33, "c": 33}
    assert sum(largest_remainder(10**18 + 7, {"x": 3, "y": 5, "z": 11}).values()) == 10**18 + 7
    assert largest_remainder(5, {"a": 0}) == {}


def test_multiplier_runs_from_the_median_to_the_band_floor() -> None:
    model, gpu = "meta-llama/Llama-3.1-8B-Instruct", "H100-SXM"
    at_median = efficiency_multiplier(model, gpu, 64, 10.0)
    assert at_median.milli == 1000
    assert at_median.band_median is not None
    median, low = at_median.band_median, at_median.band_low
    assert low is not None
    assert efficiency_multiplier(model, gpu, 64, median).milli == 1000
    assert efficiency_multiplier(model, gpu, 64, low).milli == 2000
    middle = efficiency_multiplier(model, gpu, 64, (median * low) ** 0.5).milli
    assert 1490 <= middle <= 1510
    assert efficiency_multiplier(model, gpu, 64, low / 2).milli == 1000  # below the band
    assert efficiency_multiplier(model, gpu, 64, None).milli == 1000  # unmeasured
    assert efficiency_multiplier(model, None, 64, low).milli == 1000  # GPU unknown


@EMBEDDED_ONLY
def test_rewards_minted_as_computed_inactive_excluded(market: Market) -> None:
    buyer = market.buyer(10_000_000)
    a, b = _staked(market), _staked(market)
    inactive = market.provider()  # registered, no stake
    for provider in (a, a, b, inactive):
        market.receipt(buyer.address, provider, 1_000, 50)  # 20 output tokens each, unmeasured
    pool = 90 * 10**18 + 1
    number = close_epoch(_ctx(market, pool))
    assert number is not None
    # a: 40 tokens, b: 20 tokens, both at the base rate; the inactive provider is left out
    expected = largest_remainder(pool, {a: 40_000, b: 20_000})
    assert expected == {a: 60 * 10**18 + 1, b: 30 * 10**18}
    assert market.client.network_balance(a) == expected[a]
    assert market.client.network_balance(b) == expected[b]
    assert market.client.network_balance(inactive) == 0
    with session_scope(market.sessions) as session:
        detail = service.get_epoch(session, number)
    assert detail.total_reward == pool
    rewards = {line.address: line.amount for line in detail.lines if line.kind == "reward"}
    assert rewards == expected
    excluded = {w.address: w.excluded for w in detail.reward_weights}
    assert excluded[inactive] is not None
    assert excluded[a] is None


@EMBEDDED_ONLY
def test_measured_efficient_work_earns_more_than_unmeasured(market: Market) -> None:
    buyer = market.buyer(10_000_000)
    a, b = _staked(market), _staked(market)
    job = market.receipt(buyer.address, a, 1_000, 50)
    market.receipt(buyer.address, b, 1_000, 50)
    _measure(market, job, 20_000)  # 1 J/token on model "m": no band, base rate
    number = close_epoch(_ctx(market, 1_000))
    assert number is not None
    assert market.client.network_balance(a) == 500
    assert market.client.network_balance(b) == 500


@EMBEDDED_ONLY
def test_cap_respected_and_interval(market: Market) -> None:
    buyer = market.buyer(10_000_000)
    a = _staked(market)
    market.receipt(buyer.address, a, 1_000, 50)
    number = close_epoch(_ctx(market, 10**30))
    assert number is not None
    assert market.client.network_balance(a) == PARAMS.epoch_reward_cap
    with session_scope(market.sessions) as session:
        note = service.get_epoch(session, number).reward_note
    assert note is not None
    assert "capped" in note


@EMBEDDED_ONLY
def test_a_provider_leaving_before_the_batch_is_mined_forfeits_only_its_reward(
    market: Market, monkeypatch: pytest.MonkeyPatch
) -> None:
    buyer = market.buyer(10_000_000)
    a = _staked(market)
    leaver = market.account()
    market.client.register_provider(leaver, secrets.token_bytes(32))
    market.client.transfer_network(market.chain.operator, leaver.address, STAKE)
    market.client.stake(leaver, STAKE)
    market.receipt(buyer.address, a, 1_000, 50)
    market.receipt(buyer.address, leaver.address, 1_000, 50)
    send = market.chain.client.settle_epoch

    def leave_first(*args, **kwargs):  # type: ignore[no-untyped-def]
        # after the rewards were decided with both providers active, before the batch
        # is mined: the leaver asks to unstake (a front-run)
        market.client.request_unstake(leaver, STAKE)
        return send(*args, **kwargs)

    monkeypatch.setattr(market.chain.client, "settle_epoch", leave_first)
    pool = 1_000
    number = close_epoch(_ctx(market, pool))
    assert number is not None  # the epoch settled: payments are not held up
    assert market.client.last_settled_epoch() == number
    assert market.client.network_balance(a) == 500
    assert market.client.network_balance(leaver.address) == 0
    assert market.client.earnings(leaver.address) > 0  # paid for its work all the same
    with session_scope(market.sessions) as session:
        detail = service.get_epoch(session, number)
    assert detail.status == "settled"
    assert detail.total_reward == 500
    rewards = {line.address: line.amount for line in detail.lines if line.kind == "reward"}
    assert rewards == {a: 500}
    excluded = {w.address: w.excluded for w in detail.reward_weights}
    assert excluded == {a: None, leaver.address: FORFEITED}
    assert detail.reward_note is not None
    assert detail.reward_note.endswith("; 1 forfeited (500): left before mining")
