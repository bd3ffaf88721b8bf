"""Buyer and API key tables."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column, relationship

from market.db import Amount, Base, BigIntPK, UTCDateTime, utcnow


class Buyer(Base):
    """A buyer: whoever controls an EVM address that deposits into the settlement contract."""

    __tablename__ = "buyers"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    address: Mapped[str] = mapped_column(String(42), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    api_keys: Mapped[list[ApiKey]] = relationship(
        back_populates="buyer", order_by="ApiKey.id", lazy="raise"
    )


class ApiKey(Base):
    """An API key, stored as the SHA-256 of the key; the key itself is shown once.

    Optional budgets (None: no limit) and running totals spent, in integers so that no float
    ever meets them: money in payment-token base units, wall energy in milli-watt-hours
    (1 kWh = 1_000_000 mWh) and carbon in milligrams of CO2. The totals grow in the
    transaction that charges a receipt (`market.jobs.service.complete_job`); a receipt's
    energy and carbon are rounded up to the next mWh and mg, and an unmeasured receipt adds
    nothing to them (`market.buyers.budgets`).
    """

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    buyer_id: Mapped[int] = mapped_column(ForeignKey("buyers.id"), index=True)
    name: Mapped[str | None] = mapped_column(String(100))
    prefix: Mapped[str] = mapped_column(String(32))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    budget_money: Mapped[int | None] = mapped_column(Amount())
    budget_wall_mwh: Mapped[int | None] = mapped_column(BigInteger())
    budget_gco2_mg: Mapped[int | None] = mapped_column(BigInteger())
    spent_money: Mapped[int] = mapped_column(Amount(), default=0)
    spent_wall_mwh: Mapped[int] = mapped_column(BigInteger(), default=0)
    spent_gco2_mg: Mapped[int] = mapped_column(BigInteger(), default=0)

    buyer: Mapped[Buyer] = relationship(back_populates="api_keys", lazy="joined")
