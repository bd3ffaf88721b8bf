"""Per-request energy: a window's energy shared among the requests active in it.

The rule (also in docs/energy.md):

1. Each request active in the window gets a share of the window's millijoules in
   proportion to the OUTPUT tokens it generated in that window. Prompt tokens carry
   no weight of their own: prefill energy is folded into the output tokens, as the
   ML.ENERGY leaderboard does (shared/data/README.md), so per-request figures stay
   comparable with the measured J/output-token band used to check claims.
2. If no request generated an output token in the window (prefill only), shares
   follow the prompt tokens processed in it; if there were none either, equal shares.
3. Shares are integers that sum exactly to the window's total: each request gets
   floor(total x weight / sum of weights), and the millijoules left over go one each
   to the largest remainders, ties broken by ascending request id.
4. A window with no active request attributes nothing (its energy stays in the
   attestation). An unmeasured or invalid window attributes `None`, method
   "unmeasured"; an estimated window's shares keep method "estimated".
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from provider_agent.energy.meter import Method
from provider_agent.energy.window import WindowEnergy


@dataclass(frozen=True)
class RequestActivity:
    """Tokens one request processed inside one window."""

    request_id: str
    output_tokens: int
    prompt_tokens: int = 0


@dataclass(frozen=True)
class RequestEnergy:
    """One request's share of one window: mJ (or `None`), method and how it was derived."""

    request_id: str
    energy_mj: int | None
    method: Method
    basis: str


def largest_remainder(total: int, weights: Sequence[int], keys: Sequence[str]) -> list[int]:
    """Split `total` in proportion to `weights` into integers summing exactly to `total`.

    Leftover units go to the largest fractional remainders, ties to the smallest key.
    """
    if total < 0 or any(w < 0 for w in weights) or len(weights) != len(keys):
        raise ValueError("total and weights must be non-negative, one weight per key")
    weight_sum = sum(weights)
    if weight_sum == 0:
        raise ValueError("weights must not all be zero")
    floors = [total * w // weight_sum for w in weights]
    remainders = [total * w % weight_sum for w in weights]
    order = sorted(range(len(weights)), key=lambda i: (-remainders[i], keys[i]))
    for i in order[: total - sum(floors)]:
        floors[i] += 1
    return floors


def _weights(activity: Sequence[RequestActivity]) -> tuple[list[int], str]:
    output = [a.output_tokens for a in activity]
    if sum(output) > 0:
        return output, "output tokens"
    prompt = [a.prompt_tokens for a in activity]
    if sum(prompt) > 0:
        return prompt, "prompt tokens (no output in window)"
    return [1] * len(activity), "equal shares (no tokens in window)"


def attribute_window(
    window: WindowEnergy, activity: Sequence[RequestActivity]
) -> tuple[RequestEnergy, ...]:
    """Each active request's share of `window`, by the rule in this module's docstring."""
    ids = [a.request_id for a in activity]
    if len(set(ids)) != len(ids):
        raise ValueError("request ids in a window must be unique")
    if any(a.output_tokens < 0 or a.prompt_tokens < 0 for a in activity):
        raise ValueError("token counts must be non-negative")
    if not activity:
        return ()
    if not window.valid or window.total_mj is None:
        basis = f"window invalid: {window.invalid_reason}" if not window.valid else window.basis
        return tuple(RequestEnergy(i, None, "unmeasured", basis) for i in ids)
    weights, unit = _weights(activity)
    shares = largest_remainder(window.total_mj, weights, ids)
    total_weight = sum(weights)
    return tuple(
        RequestEnergy(
            request_id=request_id,
            energy_mj=share,
            method=window.method,
            basis=f"{weight} of {total_weight} {unit} x {window.total_mj} mJ ({window.basis})",
        )
        for request_id, weight, share in zip(ids, weights, shares, strict=True)
    )


def combine_shares(shares: Iterable[RequestEnergy]) -> tuple[int | None, Method]:
    """One request's total over the windows it spanned, with the weakest method.

    No parts, or any unmeasured part, makes the total `None`/"unmeasured"; any estimated part makes
    the sum "estimated"; only all-measured parts give "measured".
    """
    total = 0
    method: Method = "measured"
    seen = False
    for share in shares:
        seen = True
        if share.energy_mj is None or share.method == "unmeasured":
            return None, "unmeasured"
        if share.method == "estimated":
            method = "estimated"
        total += share.energy_mj
    return (total, method) if seen else (None, "unmeasured")
