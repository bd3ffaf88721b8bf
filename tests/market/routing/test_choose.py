"""Routing decisions: filters, sort orders, fallbacks and the `provider` object's validation."""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest
from pydantic import ValidationError

from market.routing.errors import CompletionLimitTooLargeError
from market.routing.schemas import ProviderPreferences
from market.routing.service import SPREAD_LIMIT, RouteRequest, choose
from market.routing.table import LiveOffer, RoutingTable

MODEL = "tiny-llama"


def offer(provider: str, **overrides: object) -> LiveOffer:
    values: dict[str, object] = {
        "provider": provider,
        "model": MODEL,
        "region": "US-WA",
        "price_in_per_mtok": 100_000,
        "price_out_per_mtok": 400_000,
        "max_concurrency": 4,
        "job_url": f"http://{provider}.invalid/jobs",
    }
    values.update(overrides)
    return LiveOffer(**values)  # type: ignore[arg-type]


def pick(table: RoutingTable, **prefs: object) -> list[str]:
    request = RouteRequest(MODEL, ProviderPreferences.model_validate(prefs))
    return [o.provider for o in choose(table, request)]


@pytest.fixture
def table() -> RoutingTable:
    return RoutingTable(
        [
            offer(
                "cheap",
                price_out_per_mtok=100_000,
                latency_ms=90,
                tokens_per_s=50,
                joules_per_token=0.9,
                gco2_per_mtok=400.0,
                region="US-TX",
            ),
            offer(
                "fast",
                price_out_per_mtok=300_000,
                latency_ms=10,
                tokens_per_s=200,
                joules_per_token=0.5,
                gco2_per_mtok=120.0,
                region="US-WA",
            ),
            offer(
                "green",
                price_out_per_mtok=200_000,
                latency_ms=40,
                tokens_per_s=80,
                joules_per_token=0.3,
                gco2_per_mtok=20.0,
                region="SE",
            ),
            offer("unmetered", price_out_per_mtok=150_000, latency_ms=30, tokens_per_s=100),
        ]
    )


def test_default_is_cheapest_first_with_fallbacks(table: RoutingTable) -> None:
    assert pick(table) == ["cheap", "unmetered", "green"]


@pytest.mark.parametrize(
    ("sort", "first"),
    [("latency", "fast"), ("throughput", "fast"), ("energy", "green"), ("carbon", "green")],
)
def test_sort_orders(table: RoutingTable, sort: str, first: str) -> None:
    assert pick(table, sort=sort)[0] == first


def test_unmeasured_providers_sort_last_by_energy(table: RoutingTable) -> None:
    assert pick(table, sort="energy", allow_fallbacks=True)[-1] != "unmetered"
    assert "unmetered" not in pick(table, max_joules_per_token=10.0)


def test_filters(table: RoutingTable) -> None:
    assert pick(table, only=["fast", "green"]) == ["green", "fast"]
    assert pick(table, ignore=["cheap"], allow_fallbacks=False) == ["unmetered"]
    assert pick(table, regions=["SE", "US-WA"]) == ["unmetered", "green", "fast"]
    assert pick(table, max_price={"completion": 150_000}) == ["cheap", "unmetered"]
    assert pick(table, max_gco2_per_mtok=100.0) == ["green"]
    assert pick(table, regions=["DE"]) == []


def test_full_providers_are_skipped(table: RoutingTable) -> None:
    cheap = table.get(MODEL, "cheap")
    assert cheap is not None
    cheap.in_flight = cheap.max_concurrency
    assert pick(table)[0] == "unmetered"


def test_replace_keeps_in_flight_counts(table: RoutingTable) -> None:
    cheap = table.get(MODEL, "cheap")
    assert cheap is not None
    cheap.in_flight = 2
    table.replace([offer("cheap", price_out_per_mtok=100_000)])
    refreshed = table.get(MODEL, "cheap")
    assert refreshed is not None
    assert refreshed.in_flight == 2
    assert table.models() == [MODEL]


def test_unknown_model_has_no_route(table: RoutingTable) -> None:
    request = RouteRequest("no-such-model", ProviderPreferences())
    assert choose(table, request) == []


@pytest.mark.parametrize(
    "bad",
    [
        {"sort": "cheapest"},
        {"colour": "green"},
        {"max_price": {"prompt": -1}},
        {"max_price": {"total": 5}},
        {"only": ["a"], "ignore": ["a"]},
        {"max_price": {"prompt": 1.5}},
    ],
)
def test_bad_preferences_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        ProviderPreferences.model_validate(bad)


def _equals(count: int, **overrides: object) -> RoutingTable:
    return RoutingTable(
        [offer(f"p{i}", price_out_per_mtok=400_000 + i, **overrides) for i in range(count)]
    )


def test_near_equal_offers_share_the_traffic() -> None:
    table = _equals(4)
    rng = random.Random(7)
    request = RouteRequest(MODEL, ProviderPreferences(allow_fallbacks=False))
    firsts = Counter(choose(table, request, rng)[0].provider for _ in range(4_000))
    assert set(firsts) == {"p0", "p1", "p2", "p3"}
    assert min(firsts.values()) > 800  # about a quarter each


def test_spread_is_reproducible_with_a_seeded_random() -> None:
    table = _equals(6)
    request = RouteRequest(MODEL, ProviderPreferences())
    first = [[o.provider for o in choose(table, request, random.Random(3))] for _ in range(5)]
    assert all(order == first[0] for order in first)
    assert len(first[0]) == 3


def test_spread_favours_the_less_loaded() -> None:
    table = _equals(2)
    busy = table.get(MODEL, "p0")
    assert busy is not None
    busy.in_flight = 3
    rng = random.Random(11)
    request = RouteRequest(MODEL, ProviderPreferences(allow_fallbacks=False))
    firsts = Counter(choose(table, request, rng)[0].provider for _ in range(4_000))
    # weights 1/4 and 1: the idle one wins about 4 times in 5
    assert 0.75 < firsts["p1"] / 4_000 < 0.85


def test_offers_beyond_the_tolerance_stay_behind_the_best() -> None:
    table = RoutingTable(
        [
            offer("a", price_out_per_mtok=100_000),
            offer("b", price_out_per_mtok=104_999),
            offer("c", price_out_per_mtok=105_001),
            offer("d", price_out_per_mtok=200_000),
        ]
    )
    for seed in range(50):
        request = RouteRequest(MODEL, ProviderPreferences(), attempts=4)
        order = [o.provider for o in choose(table, request, random.Random(seed))]
        assert set(order[:2]) == {"a", "b"}
        assert order[2:] == ["c", "d"]


def test_spread_looks_at_a_bounded_number_of_equals() -> None:
    table = _equals(1_000)
    request = RouteRequest(MODEL, ProviderPreferences(), attempts=3)
    seen = {o.provider for seed in range(200) for o in choose(table, request, random.Random(seed))}
    assert seen <= {f"p{i}" for i in range(SPREAD_LIMIT)}


# -- the request's completion limit against each offer's context ------------------------------


def _asking(completion_tokens: int | None, **prefs: object) -> RouteRequest:
    preferences = ProviderPreferences.model_validate(prefs)
    return RouteRequest(MODEL, preferences, completion_tokens=completion_tokens)


@pytest.fixture
def contexts() -> RoutingTable:
    return RoutingTable(
        [
            offer("short", price_out_per_mtok=100_000, context_length=2_048),
            offer("long", price_out_per_mtok=200_000, context_length=32_768),
            offer("unreported", price_out_per_mtok=300_000),
        ]
    )


def _providers(table: RoutingTable, request: RouteRequest) -> list[str]:
    return [o.provider for o in choose(table, request)]


def test_an_offer_whose_context_cannot_hold_the_limit_is_skipped(contexts: RoutingTable) -> None:
    assert _providers(contexts, _asking(None)) == ["short", "long", "unreported"]
    assert _providers(contexts, _asking(2_048)) == ["short", "long", "unreported"]
    assert _providers(contexts, _asking(2_049)) == ["long", "unreported"]
    # an offer that does not report its context is never skipped
    assert _providers(contexts, _asking(100_000)) == ["unreported"]


def test_a_limit_past_every_offers_context_is_a_400_naming_the_longest() -> None:
    table = RoutingTable(
        [offer("short", context_length=2_048), offer("long", context_length=4_096)]
    )
    with pytest.raises(CompletionLimitTooLargeError) as raised:
        choose(table, _asking(4_097))
    error = raised.value
    assert (error.status_code, error.code, error.param) == (400, "invalid_value", "max_tokens")
    assert error.message == (
        f"max_tokens is too large: 4097. The providers of `{MODEL}` on this market serve at "
        "most 4096 tokens of context (prompt and completion together), whereas you provided "
        "4097."
    )
    assert _providers(table, _asking(4_096)) == ["long"]
    # the refusal holds whatever the load: a long offer at capacity is "not available now"
    table.get(MODEL, "long").in_flight = 4  # type: ignore[union-attr]
    assert _providers(table, _asking(4_096)) == []


def test_an_allow_list_is_refused_against_its_own_offers_context(contexts: RoutingTable) -> None:
    with pytest.raises(CompletionLimitTooLargeError, match="at most 2048 tokens"):
        choose(contexts, _asking(4_096, only=["short"]))
    assert _providers(contexts, _asking(4_096, only=["short", "long"])) == ["long"]
    assert _providers(contexts, _asking(4_096, only=["nobody"])) == []


def test_the_longest_context_follows_the_table_refresh() -> None:
    table = RoutingTable([offer("short", context_length=2_048)])
    assert table.longest_context(MODEL) == 2_048
    table.replace([offer("short", context_length=2_048), offer("unreported")])
    assert table.longest_context(MODEL) == math.inf
    assert table.longest_context("no-such-model") == math.inf
    assert choose(table, RouteRequest("no-such-model", ProviderPreferences(), 3, 10**6)) == []
