"""How many buyers and providers one settlement batch may name.

A batch's gas grows with the parties it names (docs/contracts.md, "Gas": about 6k per debit
or credit, 17k per reward mint), not with the receipts. A batch needing more gas than a block
holds could never be mined, and since epochs settle in order nothing after it would settle
either. So an epoch takes at most `party_cap` buyers and providers together; the receipts of
the others stay in no epoch, and the close builds the next epoch at once
(`market.settlement.tasks.close_epoch`). Pairs are taken oldest receipt first, so every
receipt gets its turn.
"""

from __future__ import annotations

from collections.abc import Iterable

GAS_PER_PARTY = 30_000
"""More than one buyer or provider adds to a batch: a debit or credit, a reward mint, and
their calldata."""

BLOCK_SHARE = 2
"""A batch may plan on at most 1/BLOCK_SHARE of a block's gas."""


def party_cap(configured: int, block_gas_limit: int) -> int:
    """The most parties one batch may name: `configured`, or fewer if the chain's blocks hold
    less (never below one buyer and one provider)."""
    return max(2, min(configured, block_gas_limit // BLOCK_SHARE // GAS_PER_PARTY))


def select_parties(pairs: Iterable[tuple[str, str]], cap: int) -> tuple[set[str], set[str]] | None:
    """The buyers and providers of the next batch, at most `cap` of them together, taking
    the (buyer, provider) `pairs` in the order given (oldest receipt first) and skipping a
    pair that would pass the cap; None when every pair fits."""
    buyers: set[str] = set()
    providers: set[str] = set()
    capped = False
    for buyer, provider in pairs:
        new = (buyer not in buyers) + (provider not in providers)
        if len(buyers) + len(providers) + new > cap:
            capped = True
            continue
        buyers.add(buyer)
        providers.add(provider)
    return (buyers, providers) if capped else None
