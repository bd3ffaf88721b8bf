"""Buyer and API key tables."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column, relationship

from market.db import Base, BigIntPK, UTCDateTime, utcnow


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
    """An API key, stored as the SHA-256 of the key; the key itself is shown once."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    buyer_id: Mapped[int] = mapped_column(ForeignKey("buyers.id"), index=True)
    name: Mapped[str | None] = mapped_column(String(100))
    prefix: Mapped[str] = mapped_column(String(32))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    buyer: Mapped[Buyer] = relationship(back_populates="api_keys", lazy="joined")
