"""Queries on buyers and API keys."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from market.buyers.models import ApiKey, Buyer
from market.db import utcnow


class BuyerRepository:
    """Reads and writes of buyer rows within the caller's session."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def get_by_address(self, address: str) -> Buyer | None:
        """The buyer with this (checksummed) address."""
        return self.session.scalars(select(Buyer).where(Buyer.address == address)).one_or_none()

    def ensure(self, address: str) -> Buyer:
        """The buyer with this address, created if new (safe against a concurrent creator)."""
        dialect = self.session.get_bind().dialect.name
        insert = pg_insert if dialect == "postgresql" else sqlite_insert
        stmt = (
            insert(Buyer)
            .values(address=address, created_at=utcnow())
            .on_conflict_do_nothing(index_elements=["address"])
        )
        self.session.execute(stmt)
        buyer = self.get_by_address(address)
        if buyer is None:  # pragma: no cover - the insert above makes this impossible
            raise LookupError(f"buyer {address} vanished")
        return buyer

    def add_key(self, key: ApiKey) -> ApiKey:
        """Adds an API key and flushes so that it has its id."""
        self.session.add(key)
        self.session.flush()
        return key

    def keys_of(self, buyer_id: int) -> Sequence[ApiKey]:
        """The buyer's keys, revoked ones included, oldest first."""
        stmt = select(ApiKey).where(ApiKey.buyer_id == buyer_id).order_by(ApiKey.id)
        return self.session.scalars(stmt).all()

    def get_key(self, buyer_id: int, key_id: int) -> ApiKey | None:
        """The buyer's key `key_id`, if it is the buyer's."""
        stmt = select(ApiKey).where(ApiKey.id == key_id, ApiKey.buyer_id == buyer_id)
        return self.session.scalars(stmt).one_or_none()

    def get_key_by_hash(self, key_hash: str) -> ApiKey | None:
        """The key whose hash is `key_hash` (revoked or not), with its buyer."""
        return self.session.scalars(select(ApiKey).where(ApiKey.key_hash == key_hash)).one_or_none()
