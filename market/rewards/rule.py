"""The reward rule: who gets how much of an epoch's network-token pool (pure, no I/O).

Each provider's weight is the sum over its verified receipts of the epoch of

    output tokens x m     (m in milli-units, 1000 = x1)

with m = 1000 for work whose energy was not measured (`estimated`, `none`, unmeasured) and,
for measured work, m from where the provider's J/token on that model sits in the ML.ENERGY
band for its GPU, active-parameter class and concurrency (`reference_configs`, the same
references `check_jpt_band` uses):

    median = median J/token of the references, low = min / BAND_TOLERANCE (the band's floor)
    J/token >= median                  -> m = 1000  (the base rate: no worse, no bonus)
    low <= J/token < median            -> m = 1000 + 1000 x ln(median / J) / ln(median / low)
    J/token < low (below the band)     -> m = 1000  (implausibly good: not rewarded as such)
    no GPU / model size / references   -> m = 1000

so m rises on a log scale from x1 at the median to x2 at the band's floor, rounded down to
the milli-unit. The pool is shared in proportion to the weights by the largest-remainder
method: floor(pool x w / W) each, then the units left over one each to the largest
remainders (ties: lower address first), so the shares sum exactly to the pool.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from dataclasses import dataclass

from market.energy.data import gpu_key, model_params
from market.energy.plausibility import BAND_TOLERANCE, reference_configs

BASE_MILLI = 1000
"""The multiplier of unmeasured work and of measured work at or above the band's median."""
MAX_MILLI = 2000
"""The multiplier of measured work at the band's floor."""


@dataclass(frozen=True)
class Multiplier:
    """An efficiency multiplier and why."""

    milli: int
    joules_per_token: float | None
    band_median: float | None
    band_low: float | None
    reason: str


def efficiency_multiplier(
    model: str, gpu: str | None, concurrency: float | None, joules_per_token: float | None
) -> Multiplier:
    """The multiplier of measured work at `joules_per_token` (module doc)."""
    if joules_per_token is None or joules_per_token <= 0:
        return Multiplier(BASE_MILLI, None, None, None, "energy not measured: base rate")
    if gpu is None or gpu_key(gpu) is None:
        return Multiplier(
            BASE_MILLI, joules_per_token, None, None, f"GPU {gpu!r} unknown: base rate"
        )
    params = model_params(model)
    if params is None:
        return Multiplier(
            BASE_MILLI, joules_per_token, None, None, f"size of {model!r} unknown: base rate"
        )
    refs = reference_configs(gpu, params.active_b, concurrency or 1.0)
    if not refs:
        return Multiplier(
            BASE_MILLI, joules_per_token, None, None, "no ML.ENERGY band for it: base rate"
        )
    median = float(statistics.median(c.j_per_token for c in refs))
    low = min(c.j_per_token for c in refs) / BAND_TOLERANCE
    jpt = joules_per_token
    if jpt >= median:
        return Multiplier(BASE_MILLI, jpt, median, low, "at or above the band's median")
    if jpt < low:
        return Multiplier(BASE_MILLI, jpt, median, low, "below the band's floor: base rate")
    bonus = math.floor(BASE_MILLI * math.log(median / jpt) / math.log(median / low))
    milli = min(MAX_MILLI, BASE_MILLI + max(0, bonus))
    return Multiplier(milli, jpt, median, low, "better than the band's median")


def largest_remainder(pool: int, weights: Mapping[str, int]) -> dict[str, int]:
    """`pool` split in proportion to `weights` (integers >= 0), summing exactly to `pool`
    when any weight is positive (else nothing is shared)."""
    if pool < 0:
        raise ValueError("the pool cannot be negative")
    if any(w < 0 for w in weights.values()):
        raise ValueError("weights cannot be negative")
    total = sum(weights.values())
    if total == 0 or pool == 0:
        return {}
    shares = {a: pool * w // total for a, w in weights.items()}
    left = pool - sum(shares.values())
    by_remainder = sorted(weights, key=lambda a: (-(pool * weights[a] % total), a))
    for address in by_remainder[:left]:
        shares[address] += 1
    return {a: s for a, s in shares.items() if s > 0}
