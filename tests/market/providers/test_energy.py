"""Attestation checks, reputation, published efficiency and energy routing, through the app."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import pytest
from fastapi.testclient import TestClient

from market.energy.data import regions
from market.providers.service import PHYSICS_PENALTY
from market.providers.tasks import refresh_routing
from market.routing.schemas import ProviderPreferences
from market.routing.service import RouteRequest, choose
from market.runtime import Runtime
from protocol.keys import ProviderIdentity
from protocol.messages import Attestation, Signed
from tests.market.providers.factories import MODEL, ChainProviders, attestation, now_ms

# A plausible H100 window: 24,000 J over 60 s (400 W), 120,000 output tokens: 0.2 J/token.
MEASURED = {"energy_mj": 24_000_000, "avg_power_mw": 400_000}


def _register(client: TestClient, providers: ChainProviders, **offer: Any) -> ProviderIdentity:
    identity = providers.new()
    registration = providers.registration(identity, region="US-VA", **offer)
    response = client.post("/providers/register", json=registration)
    assert response.status_code == 200, response.text
    return identity


def _post(client: TestClient, envelope: Signed[Attestation]) -> None:
    response = client.post(
        "/providers/attestations",
        content=envelope.model_dump_json(),
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 200, response.text


def _chain(
    client: TestClient, runtime: Runtime, identity: ProviderIdentity, n: int, **figures: Any
) -> None:
    start = now_ms() - 600_000
    previous: Attestation | None = None
    for seq in range(n):
        envelope = attestation(
            identity,
            runtime.chain.domain,
            seq,
            previous,
            window_start=start + seq * 60_000,
            **figures,
        )
        _post(client, envelope)
        previous = envelope.message


def test_sort_by_energy_and_carbon_caps_use_measured_figures(
    client: TestClient, runtime: Runtime, providers: ChainProviders
) -> None:
    measured = _register(client, providers)
    unmeasured = _register(client, providers)
    _chain(client, runtime, measured, 3, **MEASURED)
    _chain(client, runtime, unmeasured, 3, method="unmeasured")
    asyncio.run(refresh_routing(runtime))

    offer = runtime.routing.get(MODEL, measured.address)
    assert offer is not None
    assert offer.joules_per_token == pytest.approx(0.2)
    assert offer.energy_concurrency == pytest.approx(12.5)
    grid = regions()["US-VA"].grid_intensity
    assert grid is not None
    # 0.2 J/token x 1.4 host x 1.56 PUE / 3.6e6 x grid g/kWh x 1e6 tokens
    expected = Decimal("0.2") * Decimal("1.4") * Decimal("1.56") / 3_600_000 * grid.value * 10**6
    assert offer.gco2_per_mtok == pytest.approx(float(expected))
    tariff = regions()["US-VA"].tariff
    assert tariff is not None
    assert regions()["US-VA"].currency == "USD"
    per_mtok_usd = expected / grid.value * tariff.value
    assert offer.energy_cost_per_mtok == pytest.approx(float(per_mtok_usd * 10**6))
    other = runtime.routing.get(MODEL, unmeasured.address)
    assert other is not None
    assert (other.joules_per_token, other.gco2_per_mtok, other.energy_cost_per_mtok) == (
        None,
        None,
        None,
    )

    for sort in ("energy", "carbon", "energy_cost"):
        prefs = ProviderPreferences.model_validate({"sort": sort})
        picked = choose(runtime.routing, RouteRequest(MODEL, prefs))
        assert [o.provider for o in picked] == [measured.address, unmeasured.address]
    capped = ProviderPreferences(max_gco2_per_mtok=1e9)
    picked = choose(runtime.routing, RouteRequest(MODEL, capped))
    assert [o.provider for o in picked] == [measured.address]

    view = client.get(f"/providers/{measured.address}").json()
    [efficiency] = view["efficiency"]
    assert efficiency["model"] == MODEL
    assert efficiency["windows"] == 3
    assert efficiency["joules_per_token"] == pytest.approx(0.2)
    assert efficiency["tokens_per_s"] == pytest.approx(2000)
    assert efficiency["avg_concurrency"] == pytest.approx(12.5)
    assert view["reputation"] == 0
    statuses = {c["check"]: c["status"] for c in view["latest_checks"]}
    assert statuses["power_range"] == "pass"
    assert statuses["energy_power_consistency"] == "pass"
    assert statuses["chain_link"] == statuses["counters_monotonic"] == "pass"
    assert statuses["window_length"] == "pass"
    assert statuses["jpt_band"] == "skipped"  # tiny-llama's parameters are unknown
    # No market receipt in the window: the engine's surplus is stated, not failed.
    assert statuses["tokens_vs_receipts"] == "pass"
    reasons = {c["check"]: c["reason"] for c in view["latest_checks"]}
    assert "beyond the receipts" in reasons["tokens_vs_receipts"]
    assert {c["seq"] for c in view["latest_checks"]} == {2}
    assert client.get(f"/providers/{unmeasured.address}").json()["efficiency"] == []

    [model] = client.get("/v1/models").json()["data"]
    energy = model["market"]["energy"]
    assert (energy["providers_measured"], energy["providers_unmeasured"]) == (1, 1)
    best = energy["best_joules_per_token"]
    assert best["provider"] == measured.address
    assert best["joules_per_token"] == pytest.approx(0.2)
    assert best["avg_concurrency"] == pytest.approx(12.5)
    assert energy["median_joules_per_token"]["provider"] == measured.address


def test_a_physics_failure_lowers_reputation_and_flags_the_window(
    client: TestClient, runtime: Runtime, providers: ChainProviders
) -> None:
    identity = _register(client, providers)
    # 60,000 J in 60 s on one H100 is 1,000 W: above its 700 W limit.
    _chain(client, runtime, identity, 1, energy_mj=60_000_000, avg_power_mw=1_000_000)
    view = client.get(f"/providers/{identity.address}").json()
    assert view["reputation"] == -PHYSICS_PENALTY
    assert view["latest_attestation"]["flagged"] is True
    failed = [c for c in view["latest_checks"] if c["status"] == "fail"]
    assert any(c["check"] == "power_range" and c["kind"] == "physics" for c in failed)
    assert view["efficiency"] == []  # a flagged window is not published
    asyncio.run(refresh_routing(runtime))
    offer = runtime.routing.get(MODEL, identity.address)
    assert offer is not None
    assert offer.joules_per_token is None


def test_consistency_failures_are_recorded_without_penalty(
    client: TestClient, runtime: Runtime, providers: ChainProviders
) -> None:
    identity = _register(client, providers)
    _chain(client, runtime, identity, 2)  # 60,000 J, but 350 W x 60 s = 21,000 J
    view = client.get(f"/providers/{identity.address}").json()
    assert view["reputation"] == 0
    assert view["latest_attestation"]["flagged"] is False
    statuses = {c["check"]: (c["kind"], c["status"]) for c in view["latest_checks"]}
    assert statuses["energy_power_consistency"] == ("consistency", "fail")


def test_unknown_provider_statement_is_404(client: TestClient) -> None:
    response = client.get("/providers/0x90F79bf6EB2c4f870365E785982E1f101E93b906/statement")
    assert response.status_code == 404
