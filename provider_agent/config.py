"""The agent's settings: one object from an optional TOML file and `AGENT_*` variables.

Environment variables override the file. Nested groups use `__` in variable names
(`AGENT_VLLM__URL`, `AGENT_OFFER__REGION`); the file uses TOML tables (`[vllm]`,
`[offer]`, `[listen]`). The passphrase comes only from `AGENT_PASSPHRASE` or a prompt,
never from the file.
"""

from __future__ import annotations

import logging
import os
import tomllib
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from protocol.env_names import env_names, unknown_env

logger = logging.getLogger(__name__)

CONFIG_FILE_ENV = "AGENT_CONFIG_FILE"
PUE_PROFILES = (
    "industry_average",
    "new_large_site",
    "hyperscale_best",
    "colocation",
    "edge_or_home",
)


class ConfigError(Exception):
    """The configuration is missing something a command needs, or is invalid."""


def default_data_dir() -> Path:
    """`$XDG_DATA_HOME/joule-agent` (`~/.local/share/joule-agent`), or `./.agent` without a home."""
    xdg = os.environ.get("XDG_DATA_HOME")
    if xdg:
        return Path(xdg) / "joule-agent"
    home = os.environ.get("HOME")
    return Path(home) / ".local" / "share" / "joule-agent" if home else Path(".agent")


_PRICE_RULE = 'a price is an integer in base units per million tokens, or "auto"'


def _integer_price(value: object) -> object:
    if isinstance(value, str) and value != "auto":
        if not value.strip().isdigit():
            raise ValueError(_PRICE_RULE)
        return int(value)
    if isinstance(value, bool | float | Decimal):
        raise ValueError(_PRICE_RULE)
    return value


Price = Annotated[Annotated[int, Field(ge=0)] | Literal["auto"], BeforeValidator(_integer_price)]


def _http_url(value: str | None) -> str | None:
    if value is None:
        return None
    if not value.startswith(("http://", "https://")):
        raise ValueError(f"expected an http:// or https:// URL, got {value!r}")
    return value.rstrip("/")


class _Group(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class VllmSettings(_Group):
    """The vLLM server: a command to supervise, or the URL of one already running."""

    command: list[str] | None = None
    url: str = "http://127.0.0.1:8000"
    served_model: str | None = None
    model_digest: str | None = Field(default=None, pattern=r"^0x[0-9a-f]{64}$")

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        return _http_url(value) or value

    @field_validator("command")
    @classmethod
    def _command(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and not value:
            raise ValueError("an empty command cannot start vLLM; leave it out to attach to url")
        return value


class Tariff(_Group):
    """What the provider pays for electricity: a price per kWh in a currency."""

    per_kwh: Decimal = Field(gt=0, lt=100)
    currency: str = Field(pattern=r"^[A-Z]{3}$")


class OfferSettings(_Group):
    """What the provider offers the market and the energy figures it declares."""

    price_in_per_mtok: Price = "auto"
    price_out_per_mtok: Price = "auto"
    max_concurrency: int = Field(default=8, ge=1, le=4096)
    region: str | None = None
    tariff: Tariff | None = None
    pue_profile: str = "industry_average"
    host_overhead: float = Field(default=1.4, ge=1.0, le=3.0)
    gpu: str | None = None
    declared_power_w: float | None = Field(default=None, gt=0, le=10_000)
    public_url: str | None = None
    # Pricing (provider_agent/pricing.py): margin over the energy floor for "auto" prices,
    # and payment-token base units per unit of the tariff's currency (needed unless USD).
    auto_margin: Decimal = Field(default=Decimal("0.2"), ge=0, le=10)
    base_units_per_currency_unit: int | None = Field(default=None, gt=0)

    @field_validator("pue_profile")
    @classmethod
    def _pue(cls, value: str) -> str:
        if value not in PUE_PROFILES:
            raise ValueError(f"unknown PUE profile {value!r}; one of {', '.join(PUE_PROFILES)}")
        return value

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str | None) -> str | None:
        return _http_url(value)


class EnergySettings(_Group):
    """What the energy meter reads."""

    gpus: list[str] | None = None
    """The GPUs the engine runs on, by NVML index (`"0"`: PCI bus order, as `nvidia-smi`
    counts, whatever `CUDA_DEVICE_ORDER` says) or UUID (`"GPU-..."`); unset: those
    `CUDA_VISIBLE_DEVICES` names in vLLM's environment, else every GPU."""


class ListenSettings(_Group):
    """Where the agent's job endpoint listens."""

    host: str = "127.0.0.1"
    port: int = Field(default=8100, ge=1, le=65535)
    status_token: SecretStr | None = Field(default=None, min_length=16)
    """The bearer token `GET /agent/status` and `GET /metrics` ask for (`Authorization:
    Bearer <token>`, 401 without it); unset: they answer whoever reaches the job address,
    which the market must reach."""


class RunSettings(_Group):
    """Timings of `provider-agent run`."""

    heartbeat_interval_s: float = Field(default=15.0, gt=0, le=3600)
    attestation_window_s: float = Field(default=30.0, gt=0, le=3600)
    attestation_archive_after: int = Field(default=1000, ge=1)
    """Acknowledged attestations `attestations.jsonl` holds before they are moved, gzipped,
    to `attestations-archive/`."""
    engine_startup_timeout_s: float = Field(default=900.0, gt=0)
    engine_stop_grace_s: float = Field(default=20.0, ge=0)
    shutdown_grace_s: float = Field(default=30.0, ge=0)
    flush_timeout_s: float = Field(default=10.0, ge=0)
    receipt_sync_interval_s: float = Field(default=300.0, gt=0, le=86_400)
    retention_days: int | None = Field(default=None, ge=1)
    """Days the answered records are kept: sealed receipt day files, and attestation archive
    files whose last attestation is, more than this many UTC days before today are deleted.
    Unset: the agent deletes nothing."""


class AgentSettings(BaseSettings):
    """Everything the agent is told; see `load_settings` for where it comes from."""

    model_config = SettingsConfigDict(
        env_prefix="AGENT_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    data_dir: Path = Field(default_factory=default_data_dir)
    data_dir_min_free_mib: int = Field(default=64, ge=0)
    """Free space (MiB) the data dir's disk must keep: with less, `run` reports itself
    unhealthy and refuses new jobs (503 `outbox_unavailable`) until there is more; 0: no
    check."""
    keystore: Path | None = None
    passphrase: SecretStr | None = None
    vllm: VllmSettings = VllmSettings()
    market_url: str | None = None
    market_public_key: str | None = Field(default=None, pattern=r"^0x[0-9a-f]{64}$")
    chain_rpc_url: str | None = None
    deployment_file: Path | None = None
    offer: OfferSettings = OfferSettings()
    energy: EnergySettings = EnergySettings()
    listen: ListenSettings = ListenSettings()
    run: RunSettings = RunSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Environment first, then the values passed in (the config file's contents)."""
        return (env_settings, init_settings)

    @field_validator("market_url")
    @classmethod
    def _market_url(cls, value: str | None) -> str | None:
        return _http_url(value)

    @field_validator("chain_rpc_url")
    @classmethod
    def _rpc_url(cls, value: str | None) -> str | None:
        if value == "embedded":
            raise ValueError(
                "an agent cannot use the embedded chain (it lives inside the market's process);"
                " give the chain's RPC URL, e.g. http://127.0.0.1:8545"
            )
        return _http_url(value)

    @property
    def keystore_path(self) -> Path:
        """The keystore file: `keystore`, else `data_dir/keystore.json`."""
        return self.keystore if self.keystore is not None else self.data_dir / "keystore.json"

    def require_chain(self) -> tuple[str, Path]:
        """The RPC URL and deployment file, or `ConfigError` saying what to set."""
        missing = []
        if self.chain_rpc_url is None:
            missing.append("chain_rpc_url (AGENT_CHAIN_RPC_URL)")
        if self.deployment_file is None:
            missing.append("deployment_file (AGENT_DEPLOYMENT_FILE)")
        if self.chain_rpc_url is None or self.deployment_file is None:
            raise ConfigError(f"this command needs the chain: set {' and '.join(missing)}")
        return self.chain_rpc_url, self.deployment_file


def _read_file(path: Path) -> dict[str, Any]:
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"config file {path} does not exist") from exc
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from exc
    if "passphrase" in data:
        raise ConfigError(
            f"{path} holds a passphrase: remove it, and use AGENT_PASSPHRASE or the prompt"
        )
    return data


def _describe(exc: ValidationError) -> str:
    lines = []
    for error in exc.errors(include_url=False, include_input=False):
        where = ".".join(str(part) for part in error["loc"]) or "settings"
        lines.append(f"  {where}: {error['msg']}")
    return "invalid agent configuration:\n" + "\n".join(lines)


def unknown_settings(environ: Mapping[str, str]) -> list[str]:
    """A sentence for each `AGENT_*` variable that names no setting or group of settings:
    pydantic-settings ignores those (a misspelt member of a group is refused by its model)."""
    known = env_names("AGENT_", AgentSettings, "__")
    return unknown_env(environ, "AGENT_", known, nested="__", also={CONFIG_FILE_ENV})


def load_settings(config_file: Path | None = None) -> AgentSettings:
    """Settings from `config_file` (else `$AGENT_CONFIG_FILE`, if set) overridden by `AGENT_*`."""
    if config_file is None and os.environ.get(CONFIG_FILE_ENV):
        config_file = Path(os.environ[CONFIG_FILE_ENV])
    values = _read_file(config_file) if config_file is not None else {}
    for message in unknown_settings(os.environ):
        logger.warning("%s", message)
    try:
        return AgentSettings(**values)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from exc
