"""Queries on providers, offers and attestations."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Row, and_, delete, func, select
from sqlalchemy.orm import Session

from market.providers.models import Attestation, Offer, Provider, ProviderStatus

STEADY_WINDOWS = 10
"""How many of a provider's latest steady attestation windows its J/token is taken over."""

STEADY_LOOKBACK_MS = 3_600_000
"""Only windows that ended this recently count towards routing's J/token."""


@dataclass(frozen=True)
class RoutableOffer:
    """An offer of an online provider, with the energy figures of its latest steady windows."""

    offer: Offer
    public_key: str
    steady_energy_mj: int | None
    steady_generation_tokens: int | None


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

    def routable_offers(self, online_since: datetime, now_ms: int) -> list[RoutableOffer]:
        """Offers of active providers heard from since `online_since`, in one query.

        Energy figures sum the latest `STEADY_WINDOWS` steady windows (measured energy, output
        tokens generated, at least one request running on average) that ended within
        `STEADY_LOOKBACK_MS` of `now_ms`.
        """
        ranked = (
            select(
                Attestation.provider_address.label("provider_address"),
                Attestation.energy_mj.label("energy_mj"),
                Attestation.generation_tokens.label("generation_tokens"),
                func.row_number()
                .over(partition_by=Attestation.provider_address, order_by=Attestation.seq.desc())
                .label("rank"),
            )
            .where(
                Attestation.window_end_ms >= now_ms - STEADY_LOOKBACK_MS,
                Attestation.energy_method == "measured",
                Attestation.energy_mj.is_not(None),
                Attestation.generation_tokens > 0,
                Attestation.avg_running_milli >= 1000,
            )
            .subquery()
        )
        energy = (
            select(
                ranked.c.provider_address,
                func.sum(ranked.c.energy_mj).label("energy_mj"),
                func.sum(ranked.c.generation_tokens).label("generation_tokens"),
            )
            .where(ranked.c.rank <= STEADY_WINDOWS)
            .group_by(ranked.c.provider_address)
            .subquery()
        )
        stmt = (
            select(Offer, Provider.public_key, energy.c.energy_mj, energy.c.generation_tokens)
            .join(Provider, Provider.address == Offer.provider_address)
            .outerjoin(energy, energy.c.provider_address == Offer.provider_address)
            .where(
                Provider.status == ProviderStatus.ACTIVE,
                Provider.last_heartbeat_at >= online_since,
            )
        )
        return [_routable(row) for row in self.session.execute(stmt)]


def _routable(row: Row[Offer, str, int | None, int | None]) -> RoutableOffer:
    offer: Offer = row[0]
    public_key: str = row[1]
    energy_mj: int | None = row[2]
    tokens: int | None = row[3]
    return RoutableOffer(
        offer=offer,
        public_key=public_key,
        steady_energy_mj=None if energy_mj is None else int(energy_mj),
        steady_generation_tokens=None if tokens is None else int(tokens),
    )
