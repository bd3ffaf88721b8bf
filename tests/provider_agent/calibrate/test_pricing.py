"""The price floor, `auto` prices and `provider-agent price suggest`."""

from __future__ import annotations

import json
import math
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from protocol.canonical import JsonValue, from_hex, signing_input
from protocol.chain.deploy import Deployment
from protocol.keys import ProviderIdentity, verify_key_from_hex
from provider_agent import cli
from provider_agent.calibrate import (
    CalibratedLevel,
    Calibration,
    save_calibration,
    sign_calibration,
)
from provider_agent.config import AgentSettings, OfferSettings, Tariff
from provider_agent.pricing import (
    UNMEASURED,
    PricingError,
    floor_per_mtok,
    resolve_prices,
    suggest,
    with_resolved_prices,
)
from provider_agent.provisioning import register_with_market
from tests.provider_agent.calibrate.conftest import CHAIN_ID, SETTLEMENT

USD = Tariff(per_kwh=Decimal("0.0892"), currency="USD")
EXPECTED_OUT = 19_482  # 0.3 J x 1.4 x 1.56 / 3.6e6 x 0.0892 USD x 1e6 x 1e6 x 1.2 = 19481.28


def _settings(tmp_path: Path, **offer: Any) -> AgentSettings:
    values: dict[str, Any] = {"tariff": USD, "max_concurrency": 8, **offer}
    return AgentSettings(data_dir=tmp_path, offer=OfferSettings(**values))


def _calibration(*levels: tuple[int, int | None, int]) -> Calibration:
    return Calibration(
        model="m",
        issued_at=1,
        levels=tuple(
            CalibratedLevel(
                concurrency=c,
                method="unmeasured" if mj is None else "measured",
                energy_mj=mj,
                generation_tokens=tokens,
                reason="NVML unavailable (test)" if mj is None else None,
            )
            for c, mj, tokens in levels
        ),
    )


POINT_THREE = _calibration((8, 300_000, 1_000))  # 300 J over 1,000 tokens = 0.3 J/token


def test_floor_is_exact_and_rounds_up() -> None:
    args = (Decimal("0.3"), Decimal("1.4"), Decimal("1.56"), Decimal("0.0892"), 10**6)
    assert floor_per_mtok(*args, Decimal("0.2")) == EXPECTED_OUT
    assert floor_per_mtok(*args, Decimal(0)) == 16_235  # 16234.4 rounded up
    exact = Fraction(3, 10) * Fraction(14, 10) * Fraction(156, 100) * Fraction(892, 10_000)
    assert floor_per_mtok(*args, Decimal(0)) == math.ceil(exact / 3_600_000 * 10**12)
    # an exact integer stays put
    assert floor_per_mtok(Decimal("3.6"), 1, 1, 1, 10**6, 0) == 3_600_000 * 10**6 // 3_600_000


def test_suggest_shows_every_factor(tmp_path: Path) -> None:
    floor = suggest(_settings(tmp_path), POINT_THREE, Decimal("0.2"))
    assert (floor.price_in_per_mtok, floor.price_out_per_mtok) == (0, EXPECTED_OUT)
    factors = {factor.name: factor for factor in floor.factors}
    assert factors["GPU J/token"].value == "0.3"
    assert factors["GPU J/token"].origin.startswith("measured: calibration")
    assert factors["host overhead"].value == "1.4"
    assert factors["PUE"].value == "1.56"
    assert "Uptime Institute" in factors["PUE"].origin
    assert factors["wall J/token"].value == "0.6552"
    assert factors["tariff (USD/kWh)"].origin == "provider-declared (offer.tariff)"
    assert factors["base units per USD"].value == "1000000"
    assert factors["margin"].value == "0.2"
    assert factors["output floor (base units / Mtok)"].value == str(EXPECTED_OUT)
    assert "folded into output tokens" in factors["input floor (base units / Mtok)"].origin


def test_default_margin_comes_from_the_offer(tmp_path: Path) -> None:
    settings = _settings(tmp_path, auto_margin=Decimal("0"))
    assert suggest(settings, POINT_THREE).price_out_per_mtok == 16_235


def test_region_default_tariff(tmp_path: Path) -> None:
    settings = _settings(tmp_path, tariff=None, region="US-VA")
    floor = suggest(settings, POINT_THREE, Decimal("0.2"))
    assert floor.price_out_per_mtok == EXPECTED_OUT
    origin = {f.name: f.origin for f in floor.factors}["tariff (USD/kWh)"]
    assert "regional default US-VA" in origin
    assert "EIA" in origin
    with pytest.raises(PricingError, match="no tariff"):
        suggest(_settings(tmp_path, tariff=None, region="FR"), POINT_THREE)


def test_other_currencies_need_a_rate(tmp_path: Path) -> None:
    eur = Tariff(per_kwh=Decimal("0.1765"), currency="EUR")
    with pytest.raises(PricingError, match="base_units_per_currency_unit"):
        suggest(_settings(tmp_path, tariff=eur), POINT_THREE)
    settings = _settings(tmp_path, tariff=eur, base_units_per_currency_unit=1_080_000)
    expected = math.ceil(
        Fraction("0.3") * Fraction("1.4") * Fraction("1.56") / 3_600_000 * Fraction("0.1765")
        * 1_080_000 * 10**6 * Fraction("1.2")
    )  # fmt: skip
    assert suggest(settings, POINT_THREE, Decimal("0.2")).price_out_per_mtok == expected


def test_closest_level_and_ties_go_low(tmp_path: Path) -> None:
    calibration = _calibration((4, 400_000, 1_000_000), (16, 100_000, 1_000_000))
    assert suggest(_settings(tmp_path, max_concurrency=8), calibration).level.concurrency == 4
    assert suggest(_settings(tmp_path, max_concurrency=10), calibration).level.concurrency == 4
    assert suggest(_settings(tmp_path, max_concurrency=11), calibration).level.concurrency == 16


def test_unmeasured_refuses(tmp_path: Path) -> None:
    with pytest.raises(PricingError) as caught:
        suggest(_settings(tmp_path), _calibration((8, None, 1000)))
    assert UNMEASURED in str(caught.value)
    assert UNMEASURED == (
        "no measured J/token: the floor cannot be computed; set prices by hand or calibrate"
        " on a GPU with NVML"
    )


def test_resolve_prices(tmp_path: Path) -> None:
    assert resolve_prices(_settings(tmp_path), POINT_THREE) == (0, EXPECTED_OUT)
    explicit_in = _settings(tmp_path, price_in_per_mtok=5000)
    assert resolve_prices(explicit_in, POINT_THREE) == (5000, EXPECTED_OUT)
    fixed = _settings(tmp_path, price_in_per_mtok=1, price_out_per_mtok=2)
    assert resolve_prices(fixed, None) == (1, 2)
    with pytest.raises(PricingError, match="no calibration"):
        resolve_prices(_settings(tmp_path), None)
    with pytest.raises(PricingError, match="no measured J/token"):
        resolve_prices(_settings(tmp_path), _calibration((8, None, 1000)))


def _save(data_dir: Path, identity: ProviderIdentity, millijoules: int | None) -> None:
    level: dict[str, JsonValue] = {
        "concurrency": 8,
        "generation_tokens": 1_000,
        "energy": {
            "method": "unmeasured" if millijoules is None else "measured",
            "millijoules": millijoules,
            "basis": "test",
        },
    }
    message: dict[str, JsonValue] = {
        "type": "calibration",
        "version": 1,
        "provider": identity.address,
        "public_key": identity.public_key_hex,
        "model": "m",
        "levels": [level],
        "issued_at": 1,
        "domain": {"chain_id": CHAIN_ID, "settlement_contract": SETTLEMENT},
    }
    save_calibration(data_dir, sign_calibration(identity, message))


def test_auto_prices_become_integers_in_the_registration(tmp_path: Path) -> None:
    identity = ProviderIdentity.generate()
    _save(tmp_path, identity, 300_000)
    settings = _settings(tmp_path).model_copy(update={"market_url": "http://market.test"})
    posted: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        posted.append(json.loads(request.content))
        return httpx.Response(201, json={})

    deployment = Deployment(CHAIN_ID, "0x" + "11" * 20, "0x" + "22" * 20, SETTLEMENT, 1)
    with httpx.Client(transport=httpx.MockTransport(handler)) as http:
        ok, text = register_with_market(http, settings, identity, deployment)
    assert ok, text
    [envelope] = posted
    message = envelope["message"]
    assert message["price_in_per_mtok"] == "0"
    assert message["price_out_per_mtok"] == str(EXPECTED_OUT)
    signature = from_hex(envelope["signature"], 64)
    verify_key_from_hex(envelope["signer"]).verify(
        signing_input("provider_registration", message), signature
    )
    assert with_resolved_prices(settings).offer.price_out_per_mtok == EXPECTED_OUT


def test_registration_refuses_unresolvable_auto(tmp_path: Path) -> None:
    identity = ProviderIdentity.generate()
    settings = _settings(tmp_path).model_copy(update={"market_url": "http://market.test"})
    deployment = Deployment(CHAIN_ID, "0x" + "11" * 20, "0x" + "22" * 20, SETTLEMENT, 1)
    posted: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        posted.append(request)
        return httpx.Response(201)

    transport = httpx.MockTransport(handler)
    with httpx.Client(transport=transport) as http:
        ok, text = register_with_market(http, settings, identity, deployment)
        assert not ok
        assert "no calibration" in text
        _save(tmp_path, identity, None)
        ok, text = register_with_market(http, settings, identity, deployment)
        assert not ok
        assert "no measured J/token" in text
    assert posted == []


def test_a_tampered_calibration_is_refused(tmp_path: Path) -> None:
    identity = ProviderIdentity.generate()
    _save(tmp_path, identity, 300_000)
    path = tmp_path / "calibration.json"
    envelope = json.loads(path.read_text())
    envelope["message"]["levels"][0]["energy"]["millijoules"] = 1
    path.write_text(json.dumps(envelope))
    with pytest.raises(PricingError, match="signature"):
        with_resolved_prices(_settings(tmp_path))


def _cli_env(monkeypatch: pytest.MonkeyPatch, data_dir: Path) -> None:
    monkeypatch.setenv("AGENT_OFFER__TARIFF__PER_KWH", "0.0892")
    monkeypatch.setenv("AGENT_OFFER__TARIFF__CURRENCY", "USD")
    monkeypatch.setenv("AGENT_OFFER__MAX_CONCURRENCY", "8")


def test_cli_price_suggest(
    runner: CliRunner, agent_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _cli_env(monkeypatch, agent_env)
    _save(agent_env, ProviderIdentity.generate(), 300_000)
    result = runner.invoke(cli.app, ["price", "suggest", "--margin", "0.2"])
    assert result.exit_code == 0, result.output
    assert f"price_out_per_mtok >= {EXPECTED_OUT}" in result.output
    assert "price_in_per_mtok  >= 0" in result.output
    for name in ("GPU J/token", "host overhead", "PUE", "tariff (USD/kWh)", "margin"):
        assert name in result.output


def test_cli_price_suggest_refuses_unmeasured(
    runner: CliRunner, agent_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _cli_env(monkeypatch, agent_env)
    result = runner.invoke(cli.app, ["price", "suggest"])
    assert result.exit_code == 1
    assert "no calibration" in result.output
    _save(agent_env, ProviderIdentity.generate(), None)
    result = runner.invoke(cli.app, ["price", "suggest"])
    assert result.exit_code == 1
    assert "no measured J/token: the floor cannot be computed" in " ".join(result.output.split())
