"""Routing decisions: filters, sort orders, fallbacks and the `provider` object's validation."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from market.routing.schemas import ProviderPreferences
from market.routing.service import RouteRequest, choose
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
