"""Buyers and API keys on SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
from datetime import timedelta

import pytest
from sqlalchemy import select, text
from sqlalchemy.orm import Session

from market.buyers import service as buyers
from market.buyers.models import ApiKey
from market.buyers.schemas import ApiKeyRead, BuyerRead
from market.errors import (
    ApiKeyNotFoundError,
    AuthenticationError,
    BuyerNotFoundError,
    InvalidAddressError,
    InvalidRequestError,
)
from tests.market.factories import buyer_row, new_address


def test_buyers_are_keyed_by_checksummed_address(session: Session) -> None:
    address = new_address()
    first = buyers.get_or_create_buyer(session, address.lower())
    again = buyers.get_or_create_buyer(session, address)
    assert first.id == again.id
    assert first.address == address
    assert buyers.get_buyer(session, address.lower()).id == first.id
    assert BuyerRead.model_validate(first).address == address


def test_unknown_buyer_is_not_found(session: Session) -> None:
    with pytest.raises(BuyerNotFoundError):
        buyers.get_buyer(session, new_address())


@pytest.mark.parametrize(
    "bad",
    [
        "0x123",
        "52908400098527886E0F7030069857D2E4169EE7",
        "0x52908400098527886E0F7030069857D2E4169Ee7",  # mixed case, wrong checksum
        "0xZZ908400098527886E0F7030069857D2E4169EE7",
    ],
)
def test_bad_addresses_are_refused(session: Session, bad: str) -> None:
    with pytest.raises(InvalidAddressError):
        buyers.get_or_create_buyer(session, bad)


def test_a_new_key_is_shown_once_and_stored_as_its_hash(session: Session) -> None:
    buyer = buyer_row(session)
    created = buyers.create_api_key(session, buyer, name="laptop")
    secret = created.secret.get_secret_value()
    assert secret.startswith("sk-jm-")
    assert len(secret) == len("sk-jm-") + 43
    assert secret not in repr(created)
    assert created.key.prefix == secret[:14]
    assert created.key.name == "laptop"
    assert created.key.last_used_at is None

    row = session.scalars(select(ApiKey)).one()
    assert row.key_hash == hashlib.sha256(secret.encode()).hexdigest()
    stored = session.execute(text("SELECT * FROM api_keys")).one()
    assert all(secret not in str(value) for value in stored)


def test_keys_are_distinct(session: Session) -> None:
    buyer = buyer_row(session)
    secrets = {buyers.create_api_key(session, buyer).secret.get_secret_value() for _ in range(20)}
    assert len(secrets) == 20


def test_authenticate_finds_the_buyer_and_records_use(session: Session) -> None:
    buyer = buyer_row(session)
    created = buyers.create_api_key(session, buyer)
    found = buyers.authenticate(session, created.secret.get_secret_value())
    assert found.id == buyer.id
    [listed] = buyers.list_api_keys(session, buyer)
    assert listed.last_used_at is not None
    assert listed.last_used_at.utcoffset() == timedelta(0)


def test_last_use_is_written_at_most_once_a_minute(session: Session) -> None:
    buyer = buyer_row(session)
    secret = buyers.create_api_key(session, buyer).secret.get_secret_value()
    buyers.authenticate(session, secret)
    key = session.scalars(select(ApiKey)).one()
    first_use = key.last_used_at
    buyers.authenticate(session, secret)
    assert key.last_used_at == first_use
    assert first_use is not None
    key.last_used_at = first_use - timedelta(minutes=2)
    buyers.authenticate(session, secret)
    assert key.last_used_at is not None
    assert key.last_used_at > first_use


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "sk-jm-",
        "sk-jm-" + "A" * 43,
        "Bearer sk-jm-x",
        "sk-other-" + "A" * 43,
        "sk-jm-" + "x" * 500,
    ],
)
def test_unknown_or_malformed_keys_are_refused(session: Session, raw: str) -> None:
    buyers.create_api_key(session, buyer_row(session))
    with pytest.raises(AuthenticationError) as raised:
        buyers.authenticate(session, raw)
    assert raised.value.status_code == 401


def test_a_revoked_key_no_longer_authenticates(session: Session) -> None:
    buyer = buyer_row(session)
    keep = buyers.create_api_key(session, buyer)
    drop = buyers.create_api_key(session, buyer)
    revoked = buyers.revoke_api_key(session, buyer, drop.key.id)
    assert revoked.revoked_at is not None
    assert buyers.revoke_api_key(session, buyer, drop.key.id).revoked_at == revoked.revoked_at
    with pytest.raises(AuthenticationError, match="revoked"):
        buyers.authenticate(session, drop.secret.get_secret_value())
    assert buyers.authenticate(session, keep.secret.get_secret_value()).id == buyer.id


def test_keys_are_listed_without_secrets_and_only_to_their_owner(session: Session) -> None:
    alice, bob = buyer_row(session), buyer_row(session)
    a1 = buyers.create_api_key(session, alice, name="one")
    buyers.create_api_key(session, alice, name="two")
    b1 = buyers.create_api_key(session, bob)
    listed = buyers.list_api_keys(session, alice)
    assert [k.name for k in listed] == ["one", "two"]
    assert all(isinstance(k, ApiKeyRead) for k in listed)
    assert set(ApiKeyRead.model_fields) == {
        "id",
        "name",
        "prefix",
        "created_at",
        "last_used_at",
        "revoked_at",
        "budget_money",
        "budget_wall_mwh",
        "budget_gco2_mg",
        "spent_money",
        "spent_wall_mwh",
        "spent_gco2_mg",
    }
    assert listed[0].prefix == a1.key.prefix
    with pytest.raises(ApiKeyNotFoundError):
        buyers.revoke_api_key(session, alice, b1.key.id)


def test_key_names_are_bounded(session: Session) -> None:
    with pytest.raises(InvalidRequestError):
        buyers.create_api_key(session, buyer_row(session), name="x" * 101)
