"""Buyers and their API keys.

A key is `sk-jm-` followed by 43 URL-safe characters from 32 random bytes (256 bits). Only its
SHA-256 is stored. A slow password hash (bcrypt, argon2) protects low-entropy secrets against
guessing after a database leak; a 256-bit random key cannot be guessed whatever the hash, so a
fast hash loses nothing and lets each request find its key by an indexed equality lookup on
the hash, which reveals nothing about the key that was tried (no prefix comparison on secrets).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

from pydantic import SecretStr
from sqlalchemy import event, select
from sqlalchemy.orm import Session

from market.addresses import checksum_address
from market.buyers.models import ApiKey, Buyer
from market.buyers.repository import BuyerRepository
from market.buyers.schemas import (
    ApiKeyBudgets,
    ApiKeyCreated,
    ApiKeyRead,
    ApiKeyUpdate,
    BuyerStatement,
)
from market.db import utcnow
from market.errors import (
    ApiKeyNotFoundError,
    AuthenticationError,
    BuyerNotFoundError,
    InvalidRequestError,
)
from market.jobs.energy import EnergySummary, summarize
from market.jobs.models import Receipt
from market.ledger import service as ledger

KEY_PREFIX = "sk-jm-"
"""What every market API key starts with (so secret scanners and people recognise one)."""

KEY_RANDOM_BYTES = 32
SHOWN_PREFIX_CHARS = len(KEY_PREFIX) + 8
"""How much of a key is stored in clear and listed, to tell keys apart."""

LAST_USED_RESOLUTION = timedelta(seconds=60)
"""`last_used_at` is written at most this often per key, not on every request."""

_MAX_KEY_LENGTH = 128

KEY_CACHE_TTL_S = 2.0
"""How long the request path trusts an API key it has looked up (`cached_key`)."""
KEY_CACHE_SIZE = 10_000


def hash_key(raw_key: str) -> str:
    """The stored form of a key: hex SHA-256 of its UTF-8 bytes."""
    return hashlib.sha256(raw_key.encode("utf-8")).hexdigest()


def new_raw_key() -> str:
    """A fresh random key: `sk-jm-` and 256 bits, URL-safe base64."""
    return KEY_PREFIX + secrets.token_urlsafe(KEY_RANDOM_BYTES)


def get_or_create_buyer(session: Session, address: str) -> Buyer:
    """The buyer with this EVM address, created on first sight."""
    return BuyerRepository(session).ensure(checksum_address(address))


def get_buyer(session: Session, address: str) -> Buyer:
    """The buyer with this EVM address; `BuyerNotFoundError` if there is none."""
    address = checksum_address(address)
    buyer = BuyerRepository(session).get_by_address(address)
    if buyer is None:
        raise BuyerNotFoundError(f"no buyer {address}")
    return buyer


_BUDGETS = tuple(ApiKeyBudgets.model_fields)


def _check_budgets(budgets: ApiKeyBudgets) -> None:
    for name in _BUDGETS:
        value = getattr(budgets, name)
        if value is not None and value < 0:
            raise InvalidRequestError(f"{name} is a non-negative integer (or null: no limit)")


def create_api_key(
    session: Session,
    buyer: Buyer,
    name: str | None = None,
    budgets: ApiKeyBudgets | None = None,
) -> ApiKeyCreated:
    """Creates a key for the buyer and returns it with its secret, which is never shown again.

    `budgets`: optional limits (money in base units, wall mWh, mg CO2; `market.buyers.budgets`).
    """
    if name is not None and not 1 <= len(name) <= 100:
        raise InvalidRequestError("an API key's name is 1 to 100 characters")
    budgets = budgets or ApiKeyBudgets()
    _check_budgets(budgets)
    raw = new_raw_key()
    key = BuyerRepository(session).add_key(
        ApiKey(
            buyer_id=buyer.id,
            name=name,
            prefix=raw[:SHOWN_PREFIX_CHARS],
            key_hash=hash_key(raw),
            created_at=utcnow(),
            budget_money=budgets.budget_money,
            budget_wall_mwh=budgets.budget_wall_mwh,
            budget_gco2_mg=budgets.budget_gco2_mg,
            spent_money=0,
            spent_wall_mwh=0,
            spent_gco2_mg=0,
        )
    )
    return ApiKeyCreated(key=ApiKeyRead.model_validate(key), secret=SecretStr(raw))


def list_api_keys(session: Session, buyer: Buyer) -> list[ApiKeyRead]:
    """The buyer's keys (prefix, name, created, last used, revoked), oldest first."""
    keys: Sequence[ApiKey] = BuyerRepository(session).keys_of(buyer.id)
    return [ApiKeyRead.model_validate(k) for k in keys]


def revoke_api_key(session: Session, buyer: Buyer, key_id: int) -> ApiKeyRead:
    """Revokes one of the buyer's keys; revoking a revoked key changes nothing."""
    key = BuyerRepository(session).get_key(buyer.id, key_id)
    if key is None:
        raise ApiKeyNotFoundError(f"the buyer has no API key {key_id}")
    if key.revoked_at is None:
        key.revoked_at = utcnow()
        session.flush()
    _forget_on_commit(session, key.id)
    return ApiKeyRead.model_validate(key)


def update_api_key(session: Session, buyer: Buyer, key_id: int, update: ApiKeyUpdate) -> ApiKeyRead:
    """Sets the budgets named in `update` (null: no limit) on one of the buyer's keys; the
    totals spent are kept. 404 if it is not the buyer's."""
    _check_budgets(update)
    key = BuyerRepository(session).get_key(buyer.id, key_id)
    if key is None:
        raise ApiKeyNotFoundError(f"the buyer has no API key {key_id}")
    for name in update.model_fields_set & set(_BUDGETS):
        setattr(key, name, getattr(update, name))
    session.flush()
    _forget_on_commit(session, key.id)
    return ApiKeyRead.model_validate(key)


def authenticate(session: Session, raw_key: str) -> Buyer:
    """The buyer a key belongs to; `AuthenticationError` if it is unknown, malformed or revoked."""
    return authenticate_key(session, raw_key).buyer


def authenticate_key(session: Session, raw_key: str) -> ApiKey:
    """The live key; `AuthenticationError` if it is unknown, malformed or revoked.

    The lookup is by the key's hash, so timing says nothing about how close a guess was.
    """
    if (
        not isinstance(raw_key, str)
        or not raw_key.startswith(KEY_PREFIX)
        or len(raw_key) > _MAX_KEY_LENGTH
    ):
        raise AuthenticationError("invalid API key")
    digest = hash_key(raw_key)
    key = BuyerRepository(session).get_key_by_hash(digest)
    if key is None or not hmac.compare_digest(key.key_hash, digest):
        raise AuthenticationError("invalid API key")
    if key.revoked_at is not None:
        raise AuthenticationError("this API key was revoked")
    now = utcnow()
    if key.last_used_at is None or now - key.last_used_at >= LAST_USED_RESOLUTION:
        key.last_used_at = now
        session.flush()
    return key


@dataclass(frozen=True)
class LiveKey:
    """What the request path needs of a live API key."""

    key_id: int
    buyer: str
    budgeted: bool
    """The key has a money, energy or carbon budget (checked with its row locked)."""
    energy_budgeted: bool
    """The key has an energy or carbon budget (only offers with measured energy serve it)."""

    @classmethod
    def of(cls, key: ApiKey) -> LiveKey:
        """The snapshot of a key just read."""
        energy = key.budget_wall_mwh is not None or key.budget_gco2_mg is not None
        budgeted = energy or key.budget_money is not None
        return cls(key.id, key.buyer.address, budgeted, energy)


_LIVE_KEYS: dict[str, tuple[float, LiveKey]] = {}
"""Key hash -> (monotonic expiry, snapshot): live keys looked up in the last
`KEY_CACHE_TTL_S` seconds. Only live keys are kept; unknown and revoked ones always go to
the database."""


_KEY_CHANGES = [0]
"""How many times a key was forgotten: a lookup during which this moved is not cached."""


def cached_key(session: Session, raw_key: str) -> LiveKey:
    """`authenticate_key` for the request path, remembered for `KEY_CACHE_TTL_S` seconds.

    A key revoked (or re-budgeted) through `revoke_api_key` / `update_api_key` in this
    process is forgotten at once; in another process (another API worker) the change takes
    effect here within `KEY_CACHE_TTL_S`. Budgets themselves are always checked against the
    key's locked row; the snapshot only says whether the key has any.
    """
    if not isinstance(raw_key, str) or len(raw_key) > _MAX_KEY_LENGTH:
        raise AuthenticationError("invalid API key")
    digest = hash_key(raw_key)
    now = time.monotonic()
    found = _LIVE_KEYS.get(digest)
    if found is not None and found[0] > now:
        return found[1]
    changes = _KEY_CHANGES[0]
    live = LiveKey.of(authenticate_key(session, raw_key))
    if _KEY_CHANGES[0] != changes:
        return live  # read while a key changed: it may predate the change, so not kept
    if len(_LIVE_KEYS) >= KEY_CACHE_SIZE:
        _LIVE_KEYS.clear()
    _LIVE_KEYS[digest] = (now + KEY_CACHE_TTL_S, live)
    return live


def _forget_on_commit(session: Session, key_id: int) -> None:
    """Drops a changed key from the cache now, and again once the change is committed: a
    request that read the old row in between (or was waiting on its lock) would otherwise
    keep it for `KEY_CACHE_TTL_S`."""
    forget_key(key_id)
    event.listen(session, "after_commit", lambda _: forget_key(key_id), once=True)


def forget_key(key_id: int) -> None:
    """Drops a key from the request path's cache (after it was revoked or re-budgeted), and
    keeps lookups in flight from caching what they read."""
    _KEY_CHANGES[0] += 1
    for digest, (_, live) in list(_LIVE_KEYS.items()):
        if live.key_id == key_id:
            _LIVE_KEYS.pop(digest, None)


def buyer_statement(session: Session, address: str, limit: int = 100) -> BuyerStatement:
    """The ledger's statement of the buyer, with what is pending withdrawal (`withdrawing`)."""
    statement = ledger.statement(session, address, limit)
    return BuyerStatement(
        **statement.model_dump(),
        withdrawing=statement.balances.get("withdrawing", 0),
        owed=-statement.balances.get("overdrawn", 0),
        energy=energy_summary(session, address),
    )


def energy_summary(session: Session, address: str) -> EnergySummary:
    """Energy over the buyer's receipts, each at the site it was served at."""
    stmt = select(Receipt).where(Receipt.buyer_address == checksum_address(address))
    return summarize(session.scalars(stmt))
