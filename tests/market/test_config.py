"""Settings: embedded defaults, MARKET_* environment variables, clear validation errors."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from market.config import Settings, get_settings, normalize_database_url, redact_url
from market.runtime import agent_timeouts


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No MARKET_* variables and no .env file leak in from the machine running the tests."""
    for name in list(os.environ):
        if name.startswith("MARKET_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_defaults_are_the_embedded_mode() -> None:
    settings = Settings()
    assert settings.database_url == "sqlite:///./.var/market.sqlite3"
    assert settings.is_sqlite
    assert settings.broker_url == "memory://"
    assert settings.eager_tasks
    assert settings.chain_rpc_url == "embedded"
    assert settings.embedded_chain
    assert settings.deployment_file is None
    assert settings.confirmations == 2
    assert settings.protocol_fee_bps == 500
    assert settings.min_provider_stake == 1_000 * 10**18
    assert settings.epoch_seconds > 0
    assert settings.heartbeat_timeout_s > 0
    assert (settings.host, settings.port) == ("127.0.0.1", 8000)
    assert settings.ticket_key is None
    assert settings.operator_key is None


def test_environment_variables_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MARKET_DATABASE_URL", "postgresql://market:s3cret@db:5432/market")
    monkeypatch.setenv("MARKET_BROKER_URL", "redis://redis:6379/0")
    monkeypatch.setenv("MARKET_CHAIN_RPC_URL", "http://anvil:8545")
    monkeypatch.setenv("MARKET_DEPLOYMENT_FILE", "/deploy/deployment.json")
    monkeypatch.setenv("MARKET_PROTOCOL_FEE_BPS", "250")
    monkeypatch.setenv("MARKET_MIN_PROVIDER_STAKE", str(2**200))
    monkeypatch.setenv("MARKET_OPERATOR_KEY", "0x" + "ab" * 32)
    settings = Settings()
    assert settings.database_url == "postgresql+psycopg://market:s3cret@db:5432/market"
    assert not settings.is_sqlite
    assert not settings.eager_tasks
    assert not settings.embedded_chain
    assert settings.deployment_file == Path("/deploy/deployment.json")
    assert settings.protocol_fee_bps == 250
    assert settings.min_provider_stake == 2**200
    assert settings.operator_key is not None
    assert settings.operator_key.get_secret_value() == "0x" + "ab" * 32
    assert "ab" * 32 not in repr(settings)


def test_agent_timeouts_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    defaults = Settings()
    assert (defaults.first_token_timeout_s, defaults.agent_read_timeout_s) == (120.0, 300.0)
    assert agent_timeouts(defaults).sock_read == 300.0
    monkeypatch.setenv("MARKET_FIRST_TOKEN_TIMEOUT_S", "0.5")
    monkeypatch.setenv("MARKET_AGENT_READ_TIMEOUT_S", "45")
    settings = Settings()
    assert (settings.first_token_timeout_s, settings.agent_read_timeout_s) == (0.5, 45.0)
    timeout = agent_timeouts(settings)
    assert (timeout.total, timeout.sock_read, timeout.sock_connect) == (None, 45.0, 5.0)


def test_dotenv_file_is_read(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("MARKET_PORT=9001\nOTHER_THING=1\n")
    assert Settings().port == 9001


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("MARKET_DATABASE_URL", "mysql://u:pw@h/db", "must be sqlite:///PATH or postgresql"),
        ("MARKET_BROKER_URL", "amqp://rabbit", "must be memory://"),
        ("MARKET_CHAIN_RPC_URL", "anvil:8545", "must be 'embedded' or an http"),
        ("MARKET_PROTOCOL_FEE_BPS", "10001", "less than or equal to 10000"),
        ("MARKET_PROTOCOL_FEE_BPS", "-1", "greater than or equal to 0"),
        ("MARKET_PROTOCOL_FEE_BPS", "2.5", "valid integer"),
        ("MARKET_CONFIRMATIONS", "-1", "greater than or equal to 0"),
        ("MARKET_EPOCH_SECONDS", "0", "greater than 0"),
        ("MARKET_HEARTBEAT_TIMEOUT_S", "0", "greater than 0"),
        ("MARKET_FIRST_TOKEN_TIMEOUT_S", "0", "greater than 0"),
        ("MARKET_FIRST_TOKEN_TIMEOUT_S", "-1", "greater than 0"),
        ("MARKET_AGENT_READ_TIMEOUT_S", "0", "greater than 0"),
        ("MARKET_AGENT_READ_TIMEOUT_S", "-0.5", "greater than 0"),
        ("MARKET_PORT", "70000", "less than or equal to 65535"),
        ("MARKET_TICKET_KEY", "not-hex", "64 hex digits"),
    ],
)
def test_bad_values_are_refused_with_a_clear_message(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, message: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValidationError, match=message):
        Settings()


def test_passwords_do_not_appear_in_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MARKET_DATABASE_URL", "mysql://user:hunter2@h/db")
    with pytest.raises(ValidationError) as raised:
        Settings()
    assert "hunter2" not in str(raised.value)
    assert redact_url("postgresql://u:p%40ss@h/db") == "postgresql://u:***@h/db"


def test_a_remote_chain_needs_a_deployment_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MARKET_CHAIN_RPC_URL", "http://127.0.0.1:8545")
    with pytest.raises(ValidationError, match="MARKET_DEPLOYMENT_FILE is required"):
        Settings()


def test_a_key_and_its_file_are_exclusive(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MARKET_TICKET_KEY", "11" * 32)
    monkeypatch.setenv("MARKET_TICKET_KEY_FILE", "/keys/ticket")
    with pytest.raises(ValidationError, match="not both"):
        Settings()


@pytest.mark.parametrize(
    ("given", "normalised"),
    [
        ("postgres://u@h/db", "postgresql+psycopg://u@h/db"),
        ("postgresql://u@h/db", "postgresql+psycopg://u@h/db"),
        ("postgresql+psycopg://u@h/db", "postgresql+psycopg://u@h/db"),
        (" sqlite:///x.db ", "sqlite:///x.db"),
    ],
)
def test_database_urls_are_normalised(given: str, normalised: str) -> None:
    assert normalize_database_url(given) == normalised


def test_get_settings_is_read_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MARKET_PORT", "8100")
    first = get_settings()
    monkeypatch.setenv("MARKET_PORT", "8200")
    assert get_settings() is first
    assert first.port == 8100
    get_settings.cache_clear()
    assert get_settings().port == 8200


def test_settings_are_immutable() -> None:
    settings = Settings()
    with pytest.raises(ValidationError):
        settings.port = 1  # type: ignore[misc]
