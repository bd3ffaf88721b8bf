"""Provider messages the market accepts and what it shows of providers.

The registration and heartbeat are signed like protocol.md's messages (`signing_input(type,
message)`, Ed25519, `{"message", "signer", "signature"}` envelope) but have no model in
`protocol.messages` yet; their market-side models live here (docs/agent-protocol.md,
sections "Registration" and "Heartbeat"). The signature is checked over the message exactly
as received, before these models read it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, model_validator

from market.jobs.energy import EnergySummary
from protocol.messages import (
    Address,
    Domain,
    EnergyMethod,
    Hash32,
    PublicKeyHex,
    SignatureHex,
    UInt,
    UnixMs,
    Version,
)

REGISTRATION_TYPE = "provider_registration"
HEARTBEAT_TYPE = "provider_heartbeat"

PueProfile = Literal[
    "industry_average", "new_large_site", "hyperscale_best", "colocation", "edge_or_home"
]
Price = Annotated[StrictStr, Field(pattern=r"^(auto|[0-9]{1,78})$")]
ShortText = Annotated[StrictStr, Field(min_length=1, max_length=128)]
ModelName = Annotated[StrictStr, Field(min_length=1, max_length=256)]
JobUrl = Annotated[StrictStr, Field(pattern=r"^https?://[^\s]+$", max_length=512)]
Region = Annotated[StrictStr, Field(pattern=r"^[A-Z]{2}(-[A-Z0-9]{1,8})?$")]
MAX_CONTEXT_LENGTH = 2**31 - 1
"""The largest `context_length` a registration may declare (the column is a 32-bit integer)."""
ContextLength = Annotated[StrictInt, Field(ge=1, le=MAX_CONTEXT_LENGTH)]


class _Message(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class SignedProviderMessage(BaseModel):
    """The envelope of a registration or heartbeat; `message` is checked after the signature."""

    model_config = ConfigDict(extra="forbid")

    message: dict[str, Any]
    signer: PublicKeyHex
    signature: SignatureHex


class Tariff(_Message):
    """Electricity price: a decimal per kWh (at most 6 decimals) in an ISO 4217 currency."""

    per_kwh: Annotated[StrictStr, Field(pattern=r"^[0-9]{1,6}(\.[0-9]{1,6})?$")]
    currency: Annotated[StrictStr, Field(pattern=r"^[A-Z]{3}$")]


class Registration(_Message):
    """`provider_registration` v1: one offer, signed with the key bound on-chain.

    `gpu_count`, `quantization` and `context_length` are optional additions (absent: 1 GPU,
    not declared, not reported).
    """

    type: Literal["provider_registration"]
    version: Version
    provider: Address
    public_key: PublicKeyHex
    endpoint: JobUrl | None
    model: ModelName | None
    model_digest: Hash32 | None
    price_in_per_mtok: Price
    price_out_per_mtok: Price
    max_concurrency: Annotated[StrictInt, Field(ge=1, le=4096)]
    region: Region | None
    tariff: Tariff | None
    pue_profile: PueProfile
    host_overhead_milli: Annotated[StrictInt, Field(ge=1000, le=3000)]
    gpu: ShortText | None
    declared_power_mw: UInt | None
    issued_at: UnixMs
    expires_at: UnixMs
    domain: Domain
    gpu_count: Annotated[StrictInt, Field(ge=1, le=64)] | None = None
    quantization: Annotated[StrictStr, Field(min_length=1, max_length=32)] | None = None
    context_length: ContextLength | None = None
    """The engine's context in tokens (vLLM's `max_model_len`), as the agent read it."""

    @model_validator(mode="after")
    def _window(self) -> Self:
        if self.expires_at <= self.issued_at:
            raise ValueError("expires_at must be after issued_at")
        return self


class Heartbeat(_Message):
    """`provider_heartbeat` v1: "still here", with `issued_at` as a strictly rising nonce."""

    type: Literal["provider_heartbeat"]
    version: Version
    provider: Address
    issued_at: UnixMs
    domain: Domain


# -- answers --------------------------------------------------------------------------------


class OfferRead(BaseModel):
    """One offer as the market stores and shows it."""

    model_config = ConfigDict(from_attributes=True)

    model: str
    model_digest: str | None
    quantization: str | None
    price_in_per_mtok: int = Field(description="Payment-token base units per 1M input tokens.")
    price_out_per_mtok: int = Field(description="Payment-token base units per 1M output tokens.")
    max_concurrency: int
    region: str | None
    tariff_micro_per_kwh: int | None = Field(description="Millionths of `tariff_currency`/kWh.")
    tariff_currency: str | None
    pue_profile: str
    pue_milli: int
    host_overhead_milli: int
    gpu: str | None
    gpu_count: int
    declared_power_mw: int | None
    job_url: str
    context_length: int | None = Field(
        description="Most tokens (prompt and completion) the engine serves in one request, "
        "as it reports it (vLLM's max_model_len); null when not reported."
    )
    updated_at: datetime


class RegistrationAccepted(BaseModel):
    """The answer to an accepted registration."""

    provider: str
    public_key: str
    registered_at: datetime
    offer: OfferRead
    heartbeat_timeout_s: int = Field(description="Send heartbeats more often than this.")


class HeartbeatAccepted(BaseModel):
    """The answer to an accepted heartbeat."""

    provider: str
    received_at: datetime
    online_until: datetime = Field(description="When the provider leaves routing without one.")


class AttestationAccepted(BaseModel):
    """The answer to an accepted attestation (`duplicate`: it was stored before)."""

    provider: str
    seq: int
    digest: str
    duplicate: bool


class AttestationSummary(BaseModel):
    """The figures of one stored attestation."""

    model_config = ConfigDict(from_attributes=True)

    seq: int
    digest: str
    window_start_ms: int
    window_end_ms: int
    energy_method: EnergyMethod
    energy_mj: int | None
    prompt_tokens: int
    generation_tokens: int
    avg_power_mw: int | None
    power_limit_mw: int | None
    avg_running_milli: int
    avg_waiting_milli: int
    received_at: datetime
    model: str | None = Field(description="The model offered when the window was attested.")
    flagged: bool = Field(description="A physics or data check failed (see `latest_checks`).")


class AttestationCheckRead(BaseModel):
    """One plausibility check of one attestation (docs/energy-accounting.md)."""

    model_config = ConfigDict(from_attributes=True)

    seq: int
    check: str
    kind: str = Field(description="physics, data, consistency or hygiene.")
    status: str = Field(description="pass, fail or skipped (could not run).")
    reason: str


class EfficiencyRead(BaseModel):
    """Published efficiency of one provider on one model, from its latest steady windows
    (measured energy, >= 1 request running on average, not flagged); none: unmeasured."""

    model: str | None
    windows: int
    joules_per_token: float = Field(description="GPU joules per output token.")
    tokens_per_s: float = Field(description="Output tokens per second.")
    avg_concurrency: float = Field(description="Average running requests it was measured at.")


class CalibrationLevelRead(BaseModel):
    """One concurrency level of a calibration: tokens/s and J/token (null: unmeasured)."""

    model_config = ConfigDict(from_attributes=True)

    concurrency: int
    tokens_per_s: str
    joules_per_token: str | None
    energy_method: str
    unmeasured_reason: str | None
    generation_tokens: int


class CalibrationRead(BaseModel):
    """The provider's newest accepted calibration (`POST /providers/calibration`)."""

    model: str
    model_digest: str | None
    meter_method: str
    issued_at: int = Field(description="Unix ms, as the provider signed it.")
    received_at: datetime
    levels: list[CalibrationLevelRead]


class ProviderRead(BaseModel):
    """A provider's public view."""

    address: str
    public_key: str
    status: str
    reputation: int
    registered_at: datetime
    last_heartbeat_at: datetime | None
    online: bool = Field(description="Active with a heartbeat within the timeout: routable.")
    offers: list[OfferRead]
    latest_attestation: AttestationSummary | None
    latest_checks: list[AttestationCheckRead] = Field(
        default_factory=list, description="The checks of the latest attestation."
    )
    efficiency: list[EfficiencyRead] = Field(
        default_factory=list, description="Per model; empty: no measured steady window."
    )
    calibration: CalibrationRead | None = Field(
        default=None, description="The newest accepted calibration, if any."
    )
    payment_held: bool = Field(
        default=False,
        description="An open payment review holds its unsettled receipts out of settlement.",
    )


class StatementLine(BaseModel):
    """A provider's revenue against its energy cost for one model in one epoch."""

    model: str | None = Field(description="None on the totals line.")
    epoch: int | None = Field(description="None: receipts not yet closed into an epoch.")
    requests: int
    revenue: int = Field(description="Charges - protocol fee, payment-token base units.")
    revenue_metered: int = Field(description="Revenue of receipts with an energy figure.")
    revenue_unmeasured: int = Field(description="Revenue of unmeasured receipts.")
    energy: EnergySummary
    energy_margin: int | None = Field(
        description="revenue_metered - energy cost (base units); None if no metered receipt "
        "or one without a cost (no tariff or no rate). Unmeasured receipts are not in it."
    )


class ProviderStatement(BaseModel):
    """A provider's energy margin per model and epoch, with totals."""

    provider: str
    lines: list[StatementLine]
    totals: StatementLine
