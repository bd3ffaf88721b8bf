"""Deciding an epoch's rewards: gathers the epoch's verified work, asks the chain who is
eligible and what may be minted now, applies `market.rewards.rule`, and stores the result as
the epoch's `reward` lines and `epoch_reward_weights` rows (replacing any earlier decision for
the same unsent epoch).

What may be minted: the pool is `Settings.reward_pool_per_epoch`, never more than the network
token's `epochMintCap`. If the contract's `minRewardInterval` has not passed since
`lastRewardedAt` (judged at the newest block, which is no later than the block that will
mine the batch), the epoch settles without rewards and nothing is carried over to a later
epoch. Providers that are not active on-chain (registered with the minimum stake, not
leaving) get nothing and are logged; their weight is left out, so the pool goes to the rest.
Rewards are network tokens: they are minted by the contract to the provider and never
touch the payment-token ledger.

A provider can leave (`requestUnstake`) between this decision and the block that mines the
batch. The contract then forfeits that provider's reward (`RewardForfeited`) and settles the
rest of the epoch; `record_forfeits` takes the reward off the epoch's lines when the
settlement is booked, so they show what was minted.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import case, delete, func, select
from sqlalchemy.orm import Session

from market.jobs.models import Receipt
from market.providers.models import Offer
from market.providers.repository import ProviderRepository
from market.rewards.rule import BASE_MILLI, efficiency_multiplier, largest_remainder
from market.settlement.models import Epoch, EpochLine, EpochRewardWeight, LineKind
from protocol.chain.settlement import SettlementClient

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Work:
    """One provider's verified output tokens on one model in an epoch."""

    provider: str
    model: str
    tokens_base: int
    tokens_measured: int
    measured_mj: int


@dataclass(frozen=True)
class RewardDecision:
    """What `decide_rewards` stored: the lines, the total, and the note."""

    rewards: dict[str, int]
    total: int
    note: str


def epoch_work(session: Session, number: int) -> list[Work]:
    """Per provider and model: output tokens of the epoch's receipts, split by whether their
    energy was measured (`measured` with joules), with the measured energy."""
    measured = (Receipt.energy_method == "measured") & Receipt.energy_mj.is_not(None)
    stmt = (
        select(
            Receipt.provider_address,
            Receipt.model,
            func.sum(case((measured, 0), else_=Receipt.completion_tokens)),
            func.sum(case((measured, Receipt.completion_tokens), else_=0)),
            func.sum(case((measured, Receipt.energy_mj), else_=0)),
        )
        .where(Receipt.epoch == number)
        .group_by(Receipt.provider_address, Receipt.model)
        .order_by(Receipt.provider_address, Receipt.model)
    )
    return [
        Work(str(p), str(m), int(base or 0), int(meas or 0), int(mj or 0))
        for p, m, base, meas, mj in session.execute(stmt)
    ]


def _weights(
    session: Session, number: int, work: Sequence[Work], active: dict[str, bool]
) -> list[EpochRewardWeight]:
    providers = sorted({w.provider for w in work})
    repo = ProviderRepository(session)
    offers: dict[tuple[str, str], Offer] = {
        (o.provider_address, o.model): o for o in repo.offers_of(providers)
    }
    concurrency = {
        (s.provider, s.model): s.concurrency for s in repo.steady_windows(providers) if s.model
    }
    rows = []
    for item in work:
        offer = offers.get((item.provider, item.model))
        jpt = (
            item.measured_mj / 1000 / item.tokens_measured
            if item.tokens_measured > 0 and item.measured_mj > 0
            else None
        )
        level = concurrency.get((item.provider, item.model))
        if level is None and offer is not None:
            level = float(offer.max_concurrency)
        m = efficiency_multiplier(item.model, None if offer is None else offer.gpu, level, jpt)
        excluded = None if active[item.provider] else "not an active provider on-chain"
        rows.append(
            EpochRewardWeight(
                epoch=number,
                address=item.provider,
                model=item.model,
                tokens_base=item.tokens_base,
                tokens_measured=item.tokens_measured,
                joules_per_token=None if jpt is None else f"{jpt:.6f}",
                multiplier_milli=m.milli,
                weight=item.tokens_base * BASE_MILLI + item.tokens_measured * m.milli,
                reason=m.reason[:300],
                excluded=excluded,
            )
        )
    return rows


def decide_rewards(
    session: Session, client: SettlementClient, epoch: Epoch, pool: int
) -> RewardDecision:
    """Decides and stores epoch `epoch`'s rewards (module doc); returns them."""
    number = epoch.number
    session.execute(
        delete(EpochLine).where(EpochLine.epoch == number, EpochLine.kind == LineKind.REWARD)
    )
    session.execute(delete(EpochRewardWeight).where(EpochRewardWeight.epoch == number))
    rewards: dict[str, int] = {}
    note = _reward_window(client, pool)
    if note is None:
        cap = client.epoch_mint_cap()
        effective = min(pool, cap)
        work = epoch_work(session, number)
        active = {p: client.is_active_provider(p) for p in sorted({w.provider for w in work})}
        for provider, ok in active.items():
            if not ok:
                log.warning("epoch %d: %s is not active on-chain, no reward", number, provider)
        rows = _weights(session, number, work, active)
        session.add_all(rows)
        weights: dict[str, int] = {}
        for row in rows:
            if row.excluded is None:
                weights[row.address] = weights.get(row.address, 0) + row.weight
        rewards = largest_remainder(effective, weights)
        capped = f" (pool {pool} capped at the on-chain epochMintCap {cap})" if pool > cap else ""
        excluded = sum(1 for ok in active.values() if not ok)
        note = (
            f"pool {effective}{capped} shared by {len(rewards)} providers"
            f"; {excluded} inactive excluded"
            if rewards
            else f"no eligible verified tokens; {excluded} inactive excluded"
        )
    session.add_all(
        EpochLine(epoch=number, kind=LineKind.REWARD, address=a, amount=v)
        for a, v in sorted(rewards.items())
    )
    epoch.total_reward = sum(rewards.values())
    epoch.reward_note = note[:300]
    session.flush()
    log.info("epoch %d rewards: %s", number, note)
    return RewardDecision(rewards, epoch.total_reward, note)


FORFEITED = "reward forfeited: not active on-chain when the batch was mined"


def record_forfeits(session: Session, epoch: Epoch, forfeited: dict[str, int]) -> None:
    """Takes the rewards the contract forfeited (amounts by provider address) off epoch
    `epoch`'s reward lines and total, marks the providers' weights, and says so in the note."""
    if not forfeited:
        return
    by_address = {a.lower(): v for a, v in forfeited.items()}
    lines = session.scalars(
        select(EpochLine).where(EpochLine.epoch == epoch.number, EpochLine.kind == LineKind.REWARD)
    ).all()
    for line in lines:
        if line.address.lower() in by_address:
            session.delete(line)
    weights = session.scalars(
        select(EpochRewardWeight).where(EpochRewardWeight.epoch == epoch.number)
    ).all()
    for row in weights:
        if row.address.lower() in by_address and row.excluded is None:
            row.excluded = FORFEITED
    total = sum(forfeited.values())
    epoch.total_reward -= total
    note = f"{epoch.reward_note or ''}; {len(forfeited)} forfeited ({total}): left before mining"
    epoch.reward_note = note.lstrip("; ")[:300]
    session.flush()
    log.warning("epoch %d: rewards forfeited on-chain: %s", epoch.number, forfeited)


def _reward_window(client: SettlementClient, pool: int) -> str | None:
    """Why no rewards can be minted now, or None if they can."""
    if pool == 0:
        return "no reward pool configured"
    last = client.last_rewarded_at()
    interval = client.min_reward_interval()
    now = client.latest_block_timestamp()
    if last != 0 and now < last + interval:
        return (
            f"rewards too soon: last minted at {last}, minRewardInterval {interval} s, "
            f"next from {last + interval}; nothing carried over"
        )
    return None
