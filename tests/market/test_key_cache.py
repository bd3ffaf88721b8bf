"""The request path's API-key cache: live keys are remembered briefly, never past a revoke."""

from __future__ import annotations

import time

import pytest
from sqlalchemy.orm import Session

from market.buyers import service as buyers
from market.buyers.repository import BuyerRepository
from market.buyers.schemas import ApiKeyUpdate
from market.db import utcnow
from market.errors import AuthenticationError
from tests.market.factories import buyer_row


@pytest.fixture(autouse=True)
def _empty_cache() -> None:
    buyers._LIVE_KEYS.clear()


def test_a_cached_key_answers_without_the_database(session: Session) -> None:
    buyer = buyer_row(session)
    created = buyers.create_api_key(session, buyer)
    secret = created.secret.get_secret_value()
    live = buyers.cached_key(session, secret)
    assert (live.key_id, live.buyer, live.budgeted) == (created.key.id, buyer.address, False)
    session.close()  # a second lookup within the TTL needs no query
    assert buyers.cached_key(session, secret) == live


def test_a_revoked_key_stops_working_at_once(session: Session) -> None:
    buyer = buyer_row(session)
    created = buyers.create_api_key(session, buyer)
    secret = created.secret.get_secret_value()
    buyers.cached_key(session, secret)
    buyers.revoke_api_key(session, buyer, created.key.id)
    with pytest.raises(AuthenticationError, match="revoked"):
        buyers.cached_key(session, secret)


def test_a_key_revoked_elsewhere_stops_working_within_the_ttl(
    session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    buyer = buyer_row(session)
    created = buyers.create_api_key(session, buyer)
    secret = created.secret.get_secret_value()
    buyers.cached_key(session, secret)
    # As another API process would: the row changes, this process's cache is not told.
    key = BuyerRepository(session).get_key(buyer.id, created.key.id)
    assert key is not None
    key.revoked_at = utcnow()
    session.flush()
    assert buyers.cached_key(session, secret).key_id == created.key.id  # still cached
    clock = time.monotonic() + buyers.KEY_CACHE_TTL_S + 0.01
    monkeypatch.setattr(time, "monotonic", lambda: clock)
    with pytest.raises(AuthenticationError, match="revoked"):
        buyers.cached_key(session, secret)


def test_a_new_budget_is_seen_at_once(session: Session) -> None:
    buyer = buyer_row(session)
    created = buyers.create_api_key(session, buyer)
    secret = created.secret.get_secret_value()
    assert not buyers.cached_key(session, secret).budgeted
    buyers.update_api_key(session, buyer, created.key.id, ApiKeyUpdate(budget_money=10))
    assert buyers.cached_key(session, secret).budgeted


def test_unknown_and_malformed_keys_are_refused(session: Session) -> None:
    with pytest.raises(AuthenticationError):
        buyers.cached_key(session, "sk-jm-" + "x" * 43)
    with pytest.raises(AuthenticationError):
        buyers.cached_key(session, "not-a-key")
    assert buyers._LIVE_KEYS == {}
