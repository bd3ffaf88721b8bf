"""Per-request attribution: output-token shares, exact integer sums, unmeasured windows."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from provider_agent.energy import (
    RequestActivity,
    RequestEnergy,
    WindowEnergy,
    attribute_window,
    combine_shares,
    largest_remainder,
)
from provider_agent.energy.meter import Method


def window(
    total_mj: int | None, method: Method = "measured", invalid: str | None = None
) -> WindowEnergy:
    return WindowEnergy(
        method=method,
        start_unix_ms=0,
        end_unix_ms=1_000,
        duration_ns=10**9,
        gpus=(),
        total_mj=total_mj,
        avg_power_mw=total_mj,
        basis="NVML total-energy counter delta on 1 GPU(s) over 1.000 s",
        invalid_reason=invalid,
    )


def shares(result: tuple[RequestEnergy, ...]) -> list[tuple[str, int | None]]:
    return [(r.request_id, r.energy_mj) for r in result]


def test_shares_follow_output_tokens_and_sum_exactly() -> None:
    result = attribute_window(
        window(10_000_001),
        [
            RequestActivity("a", output_tokens=7, prompt_tokens=500),
            RequestActivity("b", output_tokens=3),
            RequestActivity("c", output_tokens=0, prompt_tokens=2_000),
        ],
    )
    assert shares(result) == [("a", 7_000_001), ("b", 3_000_000), ("c", 0)]
    assert {r.method for r in result} == {"measured"}
    assert result[0].basis == (
        "7 of 10 output tokens x 10000001 mJ "
        "(NVML total-energy counter delta on 1 GPU(s) over 1.000 s)"
    )


def test_leftover_millijoules_go_to_largest_remainders_then_smallest_id() -> None:
    equal = [RequestActivity(i, output_tokens=1) for i in ("r1", "r2", "r3")]
    assert shares(attribute_window(window(1_000), equal)) == [
        ("r1", 334),
        ("r2", 333),
        ("r3", 333),
    ]
    reordered = [RequestActivity("zeta", 1), RequestActivity("alpha", 1)]
    assert shares(attribute_window(window(3), reordered)) == [("zeta", 1), ("alpha", 2)]
    # Remainders 1/6, 3/6, 2/6 mJ: the leftover mJ goes to "mid", the largest
    # remainder, although "hi" and "lo" sort before it.
    uneven = [RequestActivity("lo", 1), RequestActivity("mid", 3), RequestActivity("hi", 2)]
    assert shares(attribute_window(window(7), uneven)) == [("lo", 1), ("mid", 4), ("hi", 2)]


def test_prefill_only_window_shares_by_prompt_tokens() -> None:
    result = attribute_window(
        window(1_000), [RequestActivity("a", 0, prompt_tokens=300), RequestActivity("b", 0, 100)]
    )
    assert shares(result) == [("a", 750), ("b", 250)]
    assert result[0].basis.startswith("300 of 400 prompt tokens (no output in window) x 1000 mJ")


def test_window_without_tokens_shares_equally() -> None:
    activity = [RequestActivity(i, 0) for i in ("c", "b", "a")]
    assert shares(attribute_window(window(10), activity)) == [("c", 3), ("b", 3), ("a", 4)]


def test_idle_window_attributes_nothing() -> None:
    assert attribute_window(window(5_000), []) == ()


def test_unmeasured_window_attributes_none() -> None:
    unmeasured = WindowEnergy(
        method="unmeasured",
        start_unix_ms=0,
        end_unix_ms=1_000,
        duration_ns=10**9,
        gpus=(),
        total_mj=None,
        avg_power_mw=None,
        basis="NVML unavailable (library_not_found)",
    )
    result = attribute_window(unmeasured, [RequestActivity("a", 5), RequestActivity("b", 1)])
    assert result == (
        RequestEnergy("a", None, "unmeasured", "NVML unavailable (library_not_found)"),
        RequestEnergy("b", None, "unmeasured", "NVML unavailable (library_not_found)"),
    )


def test_invalid_window_attributes_none_with_the_reason() -> None:
    reason = "energy counter reset on GPU GPU-a (10 mJ -> 3 mJ)"
    (result,) = attribute_window(window(None, invalid=reason), [RequestActivity("a", 5)])
    assert result == RequestEnergy("a", None, "unmeasured", f"window invalid: {reason}")


def test_estimated_window_keeps_method_estimated() -> None:
    result = attribute_window(window(700_000, "estimated"), [RequestActivity("a", 1)])
    assert [(r.energy_mj, r.method) for r in result] == [(700_000, "estimated")]


def test_duplicate_ids_and_negative_tokens_are_rejected() -> None:
    with pytest.raises(ValueError, match="unique"):
        attribute_window(window(10), [RequestActivity("a", 1), RequestActivity("a", 2)])
    with pytest.raises(ValueError, match="non-negative"):
        attribute_window(window(10), [RequestActivity("a", -1)])


def test_combine_shares_over_windows_keeps_the_weakest_method() -> None:
    m1 = RequestEnergy("a", 400, "measured", "")
    m2 = RequestEnergy("a", 600, "measured", "")
    est = RequestEnergy("a", 50, "estimated", "")
    none = RequestEnergy("a", None, "unmeasured", "")
    assert combine_shares([m1, m2]) == (1_000, "measured")
    assert combine_shares([m1, est]) == (450, "estimated")
    assert combine_shares([m1, none]) == (None, "unmeasured")
    assert combine_shares([]) == (None, "unmeasured")


@given(
    total=st.integers(min_value=0, max_value=10**15),
    weights=st.lists(st.integers(min_value=0, max_value=10**6), min_size=1, max_size=40).filter(
        lambda w: sum(w) > 0
    ),
)
def test_largest_remainder_sums_exactly_and_stays_within_one_of_the_quota(
    total: int, weights: list[int]
) -> None:
    keys = [f"req-{i:03d}" for i in range(len(weights))]
    result = largest_remainder(total, weights, keys)
    assert sum(result) == total
    for share, weight in zip(result, weights, strict=True):
        assert abs(share - Fraction(total * weight, sum(weights))) < 1
        if weight == 0:
            assert share == 0
