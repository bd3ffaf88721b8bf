"""The market's settings: one object, read from `MARKET_*` environment variables (and `.env`).

The defaults are the embedded run mode, which needs no external service: SQLite under `.var/`,
Celery tasks run in-process (`memory://` broker, eager), and an in-process EVM chain with the
contracts deployed from the shipped artifacts. The local and public testnets set the URLs.
"""

from __future__ import annotations

import logging
import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from dotenv import dotenv_values
from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from protocol.env_names import env_names, unknown_env

logger = logging.getLogger(__name__)

NOT_SETTINGS = frozenset(
    {
        "MARKET_DEPLOYER_KEY",  # read by `market chain deploy` alone
        "MARKET_TEST_DATABASE_URL",  # the test suite's PostgreSQL (scripts/start-postgres.sh)
        "MARKET_POSTGRES_DIR",  # where that script's server keeps its files
    }
)
"""`MARKET_*` variables the project reads that are not settings."""

EMBEDDED_CHAIN = "embedded"
"""`chain_rpc_url` value that selects the in-process chain (same as protocol.chain's)."""

_HEX_KEY = re.compile(r"^(0x)?[0-9a-fA-F]{64}$")
_SQLITE = ("sqlite://",)
_POSTGRES_ALIASES = ("postgres://", "postgresql://", "postgresql+psycopg://")

MEDIA_PART_TOKEN_BOUND = 16_384
"""Default `media_part_token_bound`: Qwen2.5-VL in vLLM makes up to 16,384 prompt tokens of
one image (its default max_pixels 12,845,056 / (28 x 28) pixels per token)."""

PositiveInt = Annotated[int, Field(gt=0)]
NonNegativeInt = Annotated[int, Field(ge=0)]
CheckKindName = Literal["physics", "data", "consistency", "hygiene"]
"""Kinds of plausibility check (`market.energy.plausibility.CheckKind`)."""


class Settings(BaseSettings):
    """Everything the market's processes (API, worker, beat, CLI) are configured by."""

    model_config = SettingsConfigDict(
        env_prefix="MARKET_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        frozen=True,
        hide_input_in_errors=True,  # URLs and keys carry secrets; the messages say enough
    )

    # -- where things are -----------------------------------------------------------------
    database_url: str = Field(
        default="sqlite:///./.var/market.sqlite3",
        description="SQLAlchemy URL: sqlite:///PATH or postgresql+psycopg://USER@HOST/DB.",
    )
    broker_url: str = Field(
        default="memory://",
        description="Celery broker; memory:// runs tasks in-process (eagerly).",
    )
    chain_rpc_url: str = Field(
        default=EMBEDDED_CHAIN,
        description="'embedded' for the in-process EVM, else an http(s) or ws(s) RPC URL.",
    )
    deployment_file: Path | None = Field(
        default=None,
        description="Deployment JSON (protocol.chain.deploy.Deployment) of the contracts.",
    )
    var_dir: Path = Field(
        default=Path(".var"),
        description="Where the embedded mode keeps its state (keys, deployment).",
    )

    # -- chain and money ------------------------------------------------------------------
    confirmations: NonNegativeInt = Field(
        default=2, description="Blocks a deposit must be buried under before it is credited."
    )
    epoch_seconds: PositiveInt = Field(default=600, description="Length of a settlement epoch.")
    epoch_max_parties: int = Field(
        default=400,
        ge=2,
        description="Most buyers and providers together that one settlement batch names (fewer "
        "if the chain's blocks hold less); the others' receipts settle in the next epoch, "
        "closed at once.",
    )
    protocol_fee_bps: NonNegativeInt = Field(
        default=500, le=10_000, description="Protocol fee in basis points of each charge."
    )
    min_provider_stake: NonNegativeInt = Field(
        default=1_000 * 10**18,
        description="Network-token base units a provider must stake to be routed to.",
    )
    reward_pool_per_epoch: NonNegativeInt = Field(
        default=100 * 10**18,
        description="Network-token base units shared as rewards per epoch (capped on-chain).",
    )
    heartbeat_timeout_s: PositiveInt = Field(
        default=30, description="A provider silent this long is taken out of routing."
    )
    stream_cancel_wait_s: float = Field(
        default=10.0,
        gt=0,
        le=600,
        description=(
            "When a buyer leaves a stream, the market cancels it at the provider and reads on "
            "this long for the receipt of the tokens made until it stopped, which is charged; "
            "a stream that has not ended by then is released unpaid."
        ),
    )
    first_token_timeout_s: float = Field(
        default=120.0,
        gt=0,
        description=(
            "A streamed request whose provider has sent no output token this long after the "
            "job was sent to it is closed there (the engine's request with it) and goes to the "
            "next provider, at no cost, as a stream that failed before its first token does."
        ),
    )
    agent_read_timeout_s: float = Field(
        default=300.0,
        gt=0,
        description=(
            "Longest wait for the next bytes from a provider agent: its answer's headers, then "
            "each part of its body. The only bound on a request that is not streamed."
        ),
    )
    orphaned_job_after_s: float = Field(
        default=60.0,
        ge=15,
        description=(
            "A job still open whose API process has not renewed its heartbeat (every 5 s) "
            "for this long is failed and its hold released: the process crashed or was "
            "killed mid-request."
        ),
    )
    media_part_token_bound: PositiveInt = Field(
        default=MEDIA_PART_TOKEN_BOUND,
        description=(
            "Prompt tokens the hold counts for each chat content part that is not text (an "
            "image, audio, video or file), in place of its bytes: a URL's bytes say nothing "
            "of the tokens the engine makes of it."
        ),
    )
    review_hold_kinds: frozenset[CheckKindName] = Field(
        default=frozenset({"physics", "consistency", "hygiene"}),
        description=(
            "Kinds of failed plausibility check (of an attestation or a receipt) that hold the "
            "provider's payment for review: physics (impossible), consistency (the claims "
            "contradict each other), hygiene (counters and chain), data (outside the measured "
            'band: by default only lowers reputation). A JSON list: ["physics", "hygiene"].'
        ),
    )

    # -- the market's own keys ------------------------------------------------------------
    ticket_key: SecretStr | None = Field(
        default=None, description="Ed25519 seed (32 bytes hex) that signs job tickets."
    )
    ticket_key_file: Path | None = Field(
        default=None, description="File holding the ticket key, instead of `ticket_key`."
    )
    operator_key: SecretStr | None = Field(
        default=None, description="secp256k1 private key (hex) that sends settlement txs."
    )
    operator_key_file: Path | None = Field(
        default=None, description="File holding the operator key, instead of `operator_key`."
    )

    # -- HTTP -----------------------------------------------------------------------------
    host: str = Field(default="127.0.0.1", description="Interface the API listens on.")
    port: int = Field(default=8000, ge=1, le=65_535, description="Port the API listens on.")
    sql_echo: bool = Field(default=False, description="Log every SQL statement.")

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str) -> str:
        return normalize_database_url(value)

    @field_validator("broker_url")
    @classmethod
    def _broker_url(cls, value: str) -> str:
        value = value.strip()
        if not value.startswith(("memory://", "redis://", "rediss://")):
            raise ValueError(
                "MARKET_BROKER_URL must be memory:// (in-process) or redis[s]://HOST:PORT/DB, "
                f"got {redact_url(value)!r}"
            )
        return value

    @field_validator("chain_rpc_url")
    @classmethod
    def _chain_rpc_url(cls, value: str) -> str:
        value = value.strip()
        if value != EMBEDDED_CHAIN and not value.startswith(
            ("http://", "https://", "ws://", "wss://")
        ):
            raise ValueError(
                "MARKET_CHAIN_RPC_URL must be 'embedded' or an http(s)/ws(s) URL, "
                f"got {redact_url(value)!r}"
            )
        return value

    @field_validator("ticket_key", "operator_key")
    @classmethod
    def _hex_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not _HEX_KEY.match(value.get_secret_value().strip()):
            raise ValueError("must be 32 bytes as 64 hex digits (optionally 0x-prefixed)")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.ticket_key is not None and self.ticket_key_file is not None:
            raise ValueError("set MARKET_TICKET_KEY or MARKET_TICKET_KEY_FILE, not both")
        if self.operator_key is not None and self.operator_key_file is not None:
            raise ValueError("set MARKET_OPERATOR_KEY or MARKET_OPERATOR_KEY_FILE, not both")
        if not self.embedded_chain and self.deployment_file is None:
            raise ValueError(
                "MARKET_DEPLOYMENT_FILE is required when MARKET_CHAIN_RPC_URL is not 'embedded' "
                "(the deployer writes it: chain id and contract addresses)"
            )
        return self

    @property
    def embedded_chain(self) -> bool:
        """Whether the chain is the in-process EVM."""
        return self.chain_rpc_url == EMBEDDED_CHAIN

    @property
    def eager_tasks(self) -> bool:
        """Whether background tasks run in-process, at the point they are enqueued."""
        return self.broker_url.startswith("memory://")

    @property
    def is_sqlite(self) -> bool:
        """Whether the database is SQLite (embedded mode)."""
        return self.database_url.startswith("sqlite")


def normalize_database_url(url: str) -> str:
    """`url` with PostgreSQL spelled `postgresql+psycopg://`; refuses other databases."""
    url = url.strip()
    if url.startswith(_SQLITE):
        return url
    for alias in _POSTGRES_ALIASES:
        if url.startswith(alias):
            return "postgresql+psycopg://" + url[len(alias) :]
    raise ValueError(
        "MARKET_DATABASE_URL must be sqlite:///PATH or postgresql+psycopg://USER@HOST/DB "
        f"(postgresql:// and postgres:// are accepted too), got {redact_url(url)!r}"
    )


def redact_url(url: str) -> str:
    """`url` with any password replaced by `***`, for logs and error messages."""
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read once, with a warning for each `MARKET_*` variable (in the
    environment or the `.env` file) that names no setting (a misspelt one would otherwise
    leave its default in force silently).
    Tests call `get_settings.cache_clear()`."""
    known = env_names("MARKET_", Settings)
    env_file = str(Settings.model_config.get("env_file"))
    in_file = {
        name: value or ""
        for name, value in dotenv_values(env_file, encoding="utf-8").items()
        if name not in os.environ  # the environment wins over the file, as in Settings
    }
    messages = unknown_env(os.environ, "MARKET_", known, also=NOT_SETTINGS)
    messages += unknown_env(in_file, "MARKET_", known, also=NOT_SETTINGS, source=env_file)
    for message in messages:
        logger.warning("%s", message)
    return Settings()
