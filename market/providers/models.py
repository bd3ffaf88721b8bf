"""Providers, offers, heartbeats and attestations: tables.

A provider is keyed by its EVM address (EIP-55), which holds its stake and receives its
payouts; `public_key` is the Ed25519 key bound to that address on-chain, which signs its
registrations, heartbeats, attestations and receipts. `registration_issued_at_ms` and
`heartbeat_issued_at_ms` are the `issued_at` of the last accepted registration and heartbeat:
a message not newer than these is a replay.
"""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import Mapped, mapped_column

from market.db import Amount, Base, BigIntPK, UTCDateTime, enum_column, utcnow


class ProviderStatus(enum.StrEnum):
    """Whether the market routes to a provider at all (heartbeats decide the rest)."""

    ACTIVE = "active"
    SUSPENDED = "suspended"


class Provider(Base):
    """A provider that registered with a key bound and staked on-chain."""

    __tablename__ = "providers"

    address: Mapped[str] = mapped_column(String(42), primary_key=True)
    public_key: Mapped[str] = mapped_column(String(66))
    status: Mapped[ProviderStatus] = mapped_column(
        enum_column(ProviderStatus, "provider_status"),
        default=ProviderStatus.ACTIVE,
    )
    reputation: Mapped[int] = mapped_column(Integer, default=0)
    registered_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    registration_issued_at_ms: Mapped[int] = mapped_column(BigInteger)
    last_heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), index=True)
    heartbeat_issued_at_ms: Mapped[int | None] = mapped_column(BigInteger)


class Offer(Base):
    """What a provider serves, at what price, and the energy figures it declares.

    Prices are payment-token base units per million tokens. Fractions are integer
    milli-units (`pue_milli` 1560 = 1.56) and the tariff integer micro-units of its currency
    per kWh (`tariff_micro_per_kwh` 89200 = 0.0892 USD/kWh).
    """

    __tablename__ = "provider_offers"
    __table_args__ = (UniqueConstraint("provider_address", "model"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    provider_address: Mapped[str] = mapped_column(ForeignKey("providers.address"), index=True)
    model: Mapped[str] = mapped_column(String(256))
    model_digest: Mapped[str | None] = mapped_column(String(66))
    quantization: Mapped[str | None] = mapped_column(String(32))
    price_in_per_mtok: Mapped[int] = mapped_column(Amount())
    price_out_per_mtok: Mapped[int] = mapped_column(Amount())
    max_concurrency: Mapped[int] = mapped_column(Integer)
    region: Mapped[str | None] = mapped_column(String(16))
    tariff_micro_per_kwh: Mapped[int | None] = mapped_column(BigInteger)
    tariff_currency: Mapped[str | None] = mapped_column(String(3))
    pue_profile: Mapped[str] = mapped_column(String(32))
    pue_milli: Mapped[int] = mapped_column(Integer)
    host_overhead_milli: Mapped[int] = mapped_column(Integer)
    gpu: Mapped[str | None] = mapped_column(String(128))
    gpu_count: Mapped[int] = mapped_column(Integer)
    declared_power_mw: Mapped[int | None] = mapped_column(BigInteger)
    job_url: Mapped[str] = mapped_column(String(512))
    context_length: Mapped[int | None] = mapped_column(Integer)
    """The most tokens (prompt and completion) the engine serves in one request, as the
    agent read it from the engine (vLLM's `max_model_len`); null when not reported."""
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Attestation(Base):
    """One accepted attestation: the signed envelope and the figures routing reads from it.

    Energy and token counts are the window's deltas summed over the provider's GPUs;
    `energy_mj` is null when the window was not measured, power figures when not reported.
    """

    __tablename__ = "provider_attestations"
    __table_args__ = (UniqueConstraint("provider_address", "seq"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    provider_address: Mapped[str] = mapped_column(ForeignKey("providers.address"))
    seq: Mapped[int] = mapped_column(BigInteger)
    digest: Mapped[str] = mapped_column(String(66))
    prev_hash: Mapped[str] = mapped_column(String(66))
    window_start_ms: Mapped[int] = mapped_column(BigInteger)
    window_end_ms: Mapped[int] = mapped_column(BigInteger, index=True)
    energy_method: Mapped[str] = mapped_column(String(16))
    energy_mj: Mapped[int | None] = mapped_column(BigInteger)
    prompt_tokens: Mapped[int] = mapped_column(BigInteger)
    generation_tokens: Mapped[int] = mapped_column(BigInteger)
    avg_power_mw: Mapped[int | None] = mapped_column(BigInteger)
    power_limit_mw: Mapped[int | None] = mapped_column(BigInteger)
    avg_running_milli: Mapped[int] = mapped_column(BigInteger)
    avg_waiting_milli: Mapped[int] = mapped_column(BigInteger)
    envelope: Mapped[str] = mapped_column(Text)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    model: Mapped[str | None] = mapped_column(String(256))
    """The model the provider offered when the attestation arrived (null before 0007)."""
    flagged: Mapped[bool] = mapped_column(Boolean(), default=False, server_default=false())
    """A physics or data check failed: the window is left out of published efficiency."""


class AttestationCheck(Base):
    """The outcome of one plausibility check of one attestation (market/energy/plausibility).

    `status` is pass, fail or skipped (the check could not run: GPU or model unknown, energy
    unmeasured); `kind` is physics, data, consistency or hygiene.
    """

    __tablename__ = "provider_attestation_checks"
    __table_args__ = (
        Index("ix_provider_attestation_checks_provider_seq", "provider_address", "seq"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    attestation_id: Mapped[int] = mapped_column(
        BigIntPK, ForeignKey("provider_attestations.id"), index=True
    )
    provider_address: Mapped[str] = mapped_column(String(42))
    seq: Mapped[int] = mapped_column(BigInteger)
    check: Mapped[str] = mapped_column(String(32))
    kind: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(8))
    reason: Mapped[str] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Calibration(Base):
    """A provider's newest accepted calibration (`POST /providers/calibration`): one row per
    provider, replaced by a newer one. `levels` is the per-level summary as JSON (concurrency,
    tokens/s, J/token or null with the reason); `envelope` the signed message as received."""

    __tablename__ = "provider_calibrations"

    provider_address: Mapped[str] = mapped_column(ForeignKey("providers.address"), primary_key=True)
    model: Mapped[str] = mapped_column(String(256))
    model_digest: Mapped[str | None] = mapped_column(String(66))
    meter_method: Mapped[str] = mapped_column(String(16))
    issued_at_ms: Mapped[int] = mapped_column(BigInteger)
    levels: Mapped[str] = mapped_column(Text)
    envelope: Mapped[str] = mapped_column(Text)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
