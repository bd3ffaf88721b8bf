"""Queries on providers, offers and attestations."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Row, and_, delete, func, select
from sqlalchemy.orm import Session

from market.jobs.models import Receipt
from market.providers.models import (
    Attestation,
    AttestationCheck,
    Calibration,
    Offer,
    Provider,
    ProviderStatus,
)

STEADY_WINDOWS = 10
"""How many of a provider's latest steady attestation windows its J/token is taken over."""

STEADY_LOOKBACK_MS = 3_600_000
"""Only windows that ended this recently count towards routing's J/token."""


@dataclass(frozen=True)
class SteadyWindows:
    """Sums over a provider's latest steady windows for one model (at most `STEADY_WINDOWS`).

    A steady window: measured energy, output tokens generated, at least one request running
    on average, and not flagged by a physics or data check.
    """

    provider: str
    model: str | None
    windows: int
    energy_mj: int
    generation_tokens: int
    duration_ms: int
    running_milli_ms: int
    """Sum of avg running requests (milli) x window length (ms): for the weighted average."""

    @property
    def joules_per_token(self) -> float:
        """GPU joules per output token."""
        return self.energy_mj / 1000 / self.generation_tokens

    @property
    def tokens_per_s(self) -> float:
        """Output tokens per second of window."""
        return self.generation_tokens * 1000 / self.duration_ms

    @property
    def concurrency(self) -> float:
        """Average running requests, weighted by window length."""
        return self.running_milli_ms / self.duration_ms / 1000


@dataclass(frozen=True)
class RoutableOffer:
    """An offer of an online provider, with the energy figures of its latest steady windows."""

    offer: Offer
    public_key: str
    steady: SteadyWindows | None = None

    @property
    def steady_energy_mj(self) -> int | None:
        """Energy over the steady windows (None: none measured)."""
        return None if self.steady is None else self.steady.energy_mj

    @property
    def steady_generation_tokens(self) -> int | None:
        """Output tokens over the steady windows."""
        return None if self.steady is None else self.steady.generation_tokens


class ProviderRepository:
    """Reads and writes of provider rows within the caller's session."""

    def __init__(self, session: Session) -> None:
        self.session = session

    # -- providers and offers ----------------------------------------------------------

    def get(self, address: str, *, for_update: bool = False) -> Provider | None:
        """The provider with this (checksummed) address."""
        stmt = select(Provider).where(Provider.address == address)
        if for_update:
            stmt = stmt.with_for_update()
        return self.session.scalars(stmt).one_or_none()

    def add(self, provider: Provider) -> Provider:
        """Adds a provider and flushes."""
        self.session.add(provider)
        self.session.flush()
        return provider

    def all(self) -> Sequence[Provider]:
        """Every provider, by address."""
        return self.session.scalars(select(Provider).order_by(Provider.address)).all()

    def offers_of(self, addresses: Sequence[str]) -> Sequence[Offer]:
        """The offers of these providers, by provider then model."""
        if not addresses:
            return []
        stmt = (
            select(Offer)
            .where(Offer.provider_address.in_(addresses))
            .order_by(Offer.provider_address, Offer.model)
        )
        return self.session.scalars(stmt).all()

    def get_offer(self, address: str, model: str) -> Offer | None:
        """The provider's offer for `model`."""
        stmt = select(Offer).where(Offer.provider_address == address, Offer.model == model)
        return self.session.scalars(stmt).one_or_none()

    def delete_offers_except(self, address: str, model: str) -> None:
        """Removes the provider's offers for models other than `model`."""
        self.session.execute(
            delete(Offer).where(Offer.provider_address == address, Offer.model != model)
        )

    def add_offer(self, offer: Offer) -> Offer:
        """Adds an offer and flushes."""
        self.session.add(offer)
        self.session.flush()
        return offer

    # -- attestations ------------------------------------------------------------------

    def latest_attestation(self, address: str) -> Attestation | None:
        """The provider's attestation with the highest seq."""
        stmt = (
            select(Attestation)
            .where(Attestation.provider_address == address)
            .order_by(Attestation.seq.desc())
            .limit(1)
        )
        return self.session.scalars(stmt).one_or_none()

    def attestation_at(self, address: str, seq: int) -> Attestation | None:
        """The provider's attestation `seq`."""
        stmt = select(Attestation).where(
            Attestation.provider_address == address, Attestation.seq == seq
        )
        return self.session.scalars(stmt).one_or_none()

    def add_attestation(self, attestation: Attestation) -> Attestation:
        """Adds an attestation and flushes (the (provider, seq) key refuses a second one)."""
        self.session.add(attestation)
        self.session.flush()
        return attestation

    def latest_attestations(self, addresses: Sequence[str]) -> dict[str, Attestation]:
        """The latest attestation of each of these providers that has one."""
        if not addresses:
            return {}
        last = (
            select(Attestation.provider_address, func.max(Attestation.seq).label("seq"))
            .where(Attestation.provider_address.in_(addresses))
            .group_by(Attestation.provider_address)
            .subquery()
        )
        stmt = select(Attestation).join(
            last,
            and_(
                Attestation.provider_address == last.c.provider_address,
                Attestation.seq == last.c.seq,
            ),
        )
        return {row.provider_address: row for row in self.session.scalars(stmt)}

    # -- routing -----------------------------------------------------------------------

    def add_checks(self, checks: Sequence[AttestationCheck]) -> None:
        """Adds the check results of one attestation and flushes."""
        self.session.add_all(checks)
        self.session.flush()

    def checks_of(self, attestation_ids: Sequence[int]) -> Sequence[AttestationCheck]:
        """The checks of these attestations, in the order they were run."""
        if not attestation_ids:
            return []
        stmt = (
            select(AttestationCheck)
            .where(AttestationCheck.attestation_id.in_(attestation_ids))
            .order_by(AttestationCheck.attestation_id, AttestationCheck.id)
        )
        return self.session.scalars(stmt).all()

    def receipt_tokens(self, address: str, start_ms: int, end_ms: int) -> list[int]:
        """Completion tokens of the provider's receipts that finished in [start, end)."""
        stmt = select(Receipt.completion_tokens).where(
            Receipt.provider_address == address,
            Receipt.finished_at_ms >= start_ms,
            Receipt.finished_at_ms < end_ms,
        )
        return [int(tokens) for tokens in self.session.scalars(stmt)]

    def steady_windows(
        self, addresses: Sequence[str] | None = None, since_ms: int | None = None
    ) -> list[SteadyWindows]:
        """Per provider and model, sums over the latest `STEADY_WINDOWS` steady windows
        (ended at or after `since_ms` if given; of `addresses` if given), in one query."""
        conditions = [
            Attestation.energy_method == "measured",
            Attestation.energy_mj.is_not(None),
            Attestation.generation_tokens > 0,
            Attestation.avg_running_milli >= 1000,
            Attestation.flagged.is_(False),
        ]
        if since_ms is not None:
            conditions.append(Attestation.window_end_ms >= since_ms)
        if addresses is not None:
            if not addresses:
                return []
            conditions.append(Attestation.provider_address.in_(addresses))
        ranked = (
            select(
                Attestation.provider_address,
                Attestation.model,
                Attestation.energy_mj,
                Attestation.generation_tokens,
                Attestation.window_start_ms,
                Attestation.window_end_ms,
                Attestation.avg_running_milli,
                func.row_number()
                .over(
                    partition_by=(Attestation.provider_address, Attestation.model),
                    order_by=Attestation.seq.desc(),
                )
                .label("rank"),
            )
            .where(*conditions)
            .subquery()
        )
        stmt = select(ranked).where(ranked.c.rank <= STEADY_WINDOWS)
        sums: dict[tuple[str, str | None], list[int]] = {}
        for row in self.session.execute(stmt):
            length = int(row.window_end_ms) - int(row.window_start_ms)
            acc = sums.setdefault((row.provider_address, row.model), [0, 0, 0, 0, 0])
            acc[0] += 1
            acc[1] += int(row.energy_mj)
            acc[2] += int(row.generation_tokens)
            acc[3] += length
            acc[4] += int(row.avg_running_milli) * length
        return [
            SteadyWindows(provider, model, *acc)
            for (provider, model), acc in sorted(
                sums.items(), key=lambda kv: (kv[0][0], kv[0][1] or "")
            )
        ]

    def routable_offers(self, online_since: datetime, now_ms: int) -> list[RoutableOffer]:
        """Offers of active providers heard from since `online_since`, each with its steady
        windows that ended within `STEADY_LOOKBACK_MS` of `now_ms` (two queries).

        Windows recorded before attestations named their model count for the provider's offer.
        """
        stmt = (
            select(Offer, Provider.public_key)
            .join(Provider, Provider.address == Offer.provider_address)
            .where(
                Provider.status == ProviderStatus.ACTIVE,
                Provider.last_heartbeat_at >= online_since,
            )
        )
        rows = [_routable(row) for row in self.session.execute(stmt)]
        if not rows:
            return rows
        steady = {
            (w.provider, w.model): w for w in self.steady_windows(None, now_ms - STEADY_LOOKBACK_MS)
        }
        return [
            RoutableOffer(
                offer=row.offer,
                public_key=row.public_key,
                steady=steady.get((row.offer.provider_address, row.offer.model))
                or steady.get((row.offer.provider_address, None)),
            )
            for row in rows
        ]

    def receipts_of_provider(self, address: str) -> Sequence[Receipt]:
        """Every receipt the provider was paid on, oldest first."""
        stmt = (
            select(Receipt)
            .where(Receipt.provider_address == address)
            .order_by(Receipt.finished_at_ms)
        )
        return self.session.scalars(stmt).all()

    def calibration_of(self, address: str, *, for_update: bool = False) -> Calibration | None:
        """The provider's stored calibration."""
        stmt = select(Calibration).where(Calibration.provider_address == address)
        if for_update:
            stmt = stmt.with_for_update()
        return self.session.scalars(stmt).one_or_none()

    def calibrations_of(self, addresses: Sequence[str]) -> Sequence[Calibration]:
        """The stored calibrations of `addresses`."""
        if not addresses:
            return []
        stmt = select(Calibration).where(Calibration.provider_address.in_(addresses))
        return self.session.scalars(stmt).all()


def _routable(row: Row[Offer, str]) -> RoutableOffer:
    offer: Offer = row[0]
    public_key: str = row[1]
    return RoutableOffer(offer=offer, public_key=public_key)
