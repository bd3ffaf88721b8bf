"""Nonces of signed buyer requests, remembered until their request expires, so none is replayed.

A nonce is unique per address. Rows whose request has expired are useless (an expired request
is refused before its nonce is looked at), so each consumption first deletes them.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import String, delete
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Mapped, Session, mapped_column

from market.db import Base, UTCDateTime
from market.errors import NonceReusedError


class UsedNonce(Base):
    """A nonce a buyer has used in a signed request that has not yet expired."""

    __tablename__ = "buyer_nonces"

    address: Mapped[str] = mapped_column(String(42), primary_key=True)
    nonce: Mapped[str] = mapped_column(String(64), primary_key=True)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)


def consume_nonce(session: Session, address: str, nonce: str, expires_at: int, now: int) -> None:
    """Records the nonce as used; `NonceReusedError` if it already was (a replay).

    `expires_at` and `now` are Unix seconds. Concurrent uses of one nonce: one wins, the other
    waits for it (PostgreSQL) or runs after it (SQLite) and is refused.
    """
    session.execute(delete(UsedNonce).where(UsedNonce.expires_at < _utc(now)))
    dialect = session.get_bind().dialect.name
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    stmt = (
        insert(UsedNonce)
        .values(address=address, nonce=nonce, expires_at=_utc(expires_at))
        .on_conflict_do_nothing(index_elements=["address", "nonce"])
        .returning(UsedNonce.nonce)
    )
    if session.execute(stmt).scalar_one_or_none() is None:
        raise NonceReusedError(f"nonce {nonce!r} was already used by {address}")


def _utc(unix_s: int) -> datetime:
    return datetime.fromtimestamp(unix_s, UTC)
