"""Where settings come from and how bad values are reported."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from provider_agent.config import ConfigError, load_settings


@pytest.fixture(autouse=True)
def _clean_env(agent_env: Path) -> None:
    """No stray AGENT_* variables."""


def test_the_environment_overrides_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(
        'market_url = "https://market.example/"\n'
        "[vllm]\n"
        'served_model = "from-file"\n'
        "[offer]\n"
        "price_in_per_mtok = 150000\n"
        'tariff = { per_kwh = 0.12, currency = "EUR" }\n'
    )
    monkeypatch.setenv("AGENT_VLLM__SERVED_MODEL", "from-env")
    monkeypatch.setenv("AGENT_OFFER__PRICE_OUT_PER_MTOK", "600000")

    settings = load_settings(config)

    assert settings.vllm.served_model == "from-env"
    assert settings.market_url == "https://market.example"
    assert settings.offer.price_in_per_mtok == 150000
    assert settings.offer.price_out_per_mtok == 600000
    assert settings.offer.tariff is not None
    assert settings.offer.tariff.per_kwh == Decimal("0.12")
    assert settings.offer.host_overhead == 1.4
    assert settings.keystore_path == settings.data_dir / "keystore.json"


def test_the_config_file_may_come_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "agent.toml"
    config.write_text("[listen]\nport = 9100\n")
    monkeypatch.setenv("AGENT_CONFIG_FILE", str(config))

    assert load_settings().listen.port == 9100


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("AGENT_OFFER__PRICE_IN_PER_MTOK", "1.5", "integer in base units"),
        ("AGENT_OFFER__PUE_PROFILE", "moon_base", "unknown PUE profile"),
        ("AGENT_OFFER__HOST_OVERHEAD", "0.5", "offer.host_overhead"),
        ("AGENT_MARKET_URL", "market.example", "http:// or https://"),
        ("AGENT_VLLM__MODEL_DIGEST", "abc", "vllm.model_digest"),
        ("AGENT_RUN__RETENTION_DAYS", "0", "run.retention_days: .* greater than or equal to 1"),
        ("AGENT_RUN__RETENTION_DAYS", "-7", "run.retention_days: .* greater than or equal to 1"),
    ],
)
def test_bad_values_are_named(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, message: str
) -> None:
    monkeypatch.setenv(variable, value)

    with pytest.raises(ConfigError, match=message):
        load_settings()


def test_the_retention_is_unset_unless_configured(tmp_path: Path) -> None:
    assert load_settings().run.retention_days is None  # the agent deletes nothing
    config = tmp_path / "agent.toml"
    config.write_text("[run]\nretention_days = 30\n")
    assert load_settings(config).run.retention_days == 30


def test_a_passphrase_in_the_file_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text('passphrase = "hunter2"\n')

    with pytest.raises(ConfigError, match="AGENT_PASSPHRASE"):
        load_settings(config)


def test_a_missing_config_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "missing.toml")
