"""The request path's API-key cache: live keys are remembered briefly, never past a revoke."""

from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy.orm import Session, sessionmaker

from market.buyers import service as buyers
from market.buyers.models import Buyer
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


#: Only PostgreSQL lets a request read a key while a change to it is uncommitted: SQLite's
#: transactions (BEGIN IMMEDIATE) run one at a time.
ON_POSTGRES = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)


def _committed_key(sessions: sessionmaker[Session], used: bool) -> tuple[int, int, str]:
    """A buyer's id, a new key's id and secret, committed; `used`: looked up once (so its
    `last_used_at` is fresh and a lookup writes nothing), then dropped from the cache."""
    with sessions() as setup, setup.begin():
        buyer = buyer_row(setup)
        created = buyers.create_api_key(setup, buyer)
        secret = created.secret.get_secret_value()
        if used:
            buyers.cached_key(setup, secret)
        ids = buyer.id, created.key.id
    buyers._LIVE_KEYS.clear()
    return *ids, secret


def _change(session: Session, buyer_id: int, key_id: int, change: str) -> None:
    owner = session.get(Buyer, buyer_id)
    assert owner is not None
    if change == "revoke":
        buyers.revoke_api_key(session, owner, key_id)
    else:
        buyers.update_api_key(session, owner, key_id, ApiKeyUpdate(budget_money=10))


@ON_POSTGRES
@pytest.mark.parametrize("change", ["revoke", "budget"])
def test_a_key_read_before_its_change_was_committed_is_not_kept(
    session_factory: sessionmaker[Session], change: str
) -> None:
    buyer_id, key_id, secret = _committed_key(session_factory, used=True)
    with session_factory() as changing, session_factory() as reading:
        _change(changing, buyer_id, key_id, change)
        # A request in between reads the committed row, which it may cache.
        assert not buyers.cached_key(reading, secret).budgeted
        reading.rollback()
        changing.commit()
        if change == "revoke":
            with pytest.raises(AuthenticationError, match="revoked"):
                buyers.cached_key(reading, secret)
        else:
            assert buyers.cached_key(reading, secret).budgeted


@ON_POSTGRES
def test_a_key_read_while_waiting_for_its_revoke_is_not_kept(
    session_factory: sessionmaker[Session],
) -> None:
    buyer_id, key_id, secret = _committed_key(session_factory, used=False)
    read: list[buyers.LiveKey] = []

    def request() -> None:  # notes the key's first use: waits on the revoke's row lock
        with session_factory() as reading, reading.begin():
            read.append(buyers.cached_key(reading, secret))

    with session_factory() as changing:
        _change(changing, buyer_id, key_id, "revoke")
        waiting = threading.Thread(target=request)
        waiting.start()
        waiting.join(timeout=1)
        assert waiting.is_alive()  # blocked on the row
        changing.commit()
    waiting.join(timeout=10)
    assert len(read) == 1  # it began before the revoke was committed, and was served
    with session_factory() as later, pytest.raises(AuthenticationError, match="revoked"):
        buyers.cached_key(later, secret)


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
