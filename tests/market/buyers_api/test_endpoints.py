"""The buyer account API through the real app, on SQLite and PostgreSQL."""

from __future__ import annotations

import time
from typing import Any

import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount

from market.buyers.signin import MAX_LIFETIME_S, BuyerAction, sign_request
from market.db import session_scope
from market.ledger import service as ledger
from protocol.messages import Domain
from tests.market.buyers_api.conftest import BuyerApi
from tests.market.factories import new_address, new_tx_hash


def _signed(api: BuyerApi, account: LocalAccount, action: BuyerAction, **kw: Any) -> dict[str, str]:
    return sign_request(account, action, api.domain, **kw)


def _create_key(api: BuyerApi, buyer: LocalAccount, name: str | None = None) -> dict[str, Any]:
    response = api.client.post(
        f"/buyers/{buyer.address}/api-keys",
        json={"name": name} if name else None,
        headers=_signed(api, buyer, BuyerAction.CREATE_API_KEY),
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def _error(response: Any, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code, response.text


def test_create_list_revoke_and_use_a_key(api: BuyerApi, buyer: LocalAccount) -> None:
    created = _create_key(api, buyer, "laptop")
    assert created["secret"].startswith("sk-jm-")
    assert created["secret"].startswith(created["prefix"])
    assert created["name"] == "laptop"
    assert {"id", "created_at", "revoked_at"} <= set(created)

    listed = api.client.get(
        f"/buyers/{buyer.address}/api-keys", headers=_signed(api, buyer, BuyerAction.LIST_API_KEYS)
    )
    assert listed.status_code == 200
    assert [k["id"] for k in listed.json()] == [created["id"]]
    assert "secret" not in listed.json()[0]

    bearer = {"Authorization": f"Bearer {created['secret']}"}
    statement = api.client.get(f"/buyers/{buyer.address}/statement", headers=bearer)
    assert statement.status_code == 200, statement.text
    assert statement.json()["owner"] == buyer.address

    revoked = api.client.delete(
        f"/buyers/{buyer.address}/api-keys/{created['id']}",
        headers=_signed(api, buyer, BuyerAction.REVOKE_API_KEY),
    )
    assert revoked.status_code == 200
    assert revoked.json()["revoked_at"] is not None
    _error(
        api.client.get(f"/buyers/{buyer.address}/statement", headers=bearer), 401, "invalid_api_key"
    )


def test_a_key_without_a_name_and_an_unknown_buyer_has_no_keys(
    api: BuyerApi, buyer: LocalAccount
) -> None:
    listed = api.client.get(
        f"/buyers/{buyer.address}/api-keys", headers=_signed(api, buyer, BuyerAction.LIST_API_KEYS)
    )
    assert listed.json() == []
    assert _create_key(api, buyer)["name"] is None


def test_a_bad_name_is_refused_in_the_market_body(api: BuyerApi, buyer: LocalAccount) -> None:
    response = api.client.post(
        f"/buyers/{buyer.address}/api-keys",
        json={"name": "x" * 101},
        headers=_signed(api, buyer, BuyerAction.CREATE_API_KEY),
    )
    _error(response, 422, "invalid_request")


def test_a_name_with_a_control_character_is_refused(api: BuyerApi, buyer: LocalAccount) -> None:
    response = api.client.post(
        f"/buyers/{buyer.address}/api-keys",
        json={"name": "a\u0000b"},
        headers=_signed(api, buyer, BuyerAction.CREATE_API_KEY),
    )
    _error(response, 422, "invalid_request")
    assert _create_key(api, buyer, "laptop \u00e9\u2603")["name"] == "laptop \u00e9\u2603"


def test_a_key_id_beyond_the_database_is_refused(api: BuyerApi, buyer: LocalAccount) -> None:
    path = f"/buyers/{buyer.address}/api-keys/{2**63}"
    patched = api.client.patch(
        path, json={"budget_money": 1}, headers=_signed(api, buyer, BuyerAction.UPDATE_API_KEY)
    )
    _error(patched, 422, "invalid_request")
    revoked = api.client.delete(path, headers=_signed(api, buyer, BuyerAction.REVOKE_API_KEY))
    _error(revoked, 422, "invalid_request")


def test_a_bug_is_a_500_in_the_market_body(
    api: BuyerApi, buyer: LocalAccount, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_: Any) -> None:
        raise RuntimeError("a bug with a secret in it")

    monkeypatch.setattr("market.buyers.service.get_buyer", broken)
    response = api.client.get(
        f"/buyers/{buyer.address}/api-keys", headers=_signed(api, buyer, BuyerAction.LIST_API_KEYS)
    )
    _error(response, 500, "internal_error")
    assert set(response.json()["error"]) == {"code", "message"}
    assert "secret" not in response.text


def test_revoking_another_buyers_key_is_not_found(api: BuyerApi, buyer: LocalAccount) -> None:
    other: LocalAccount = Account.create()
    theirs = _create_key(api, other)
    _create_key(api, buyer)
    response = api.client.delete(
        f"/buyers/{buyer.address}/api-keys/{theirs['id']}",
        headers=_signed(api, buyer, BuyerAction.REVOKE_API_KEY),
    )
    _error(response, 404, "api_key_not_found")


def test_another_buyers_key_cannot_read_a_statement(api: BuyerApi, buyer: LocalAccount) -> None:
    other: LocalAccount = Account.create()
    theirs = _create_key(api, other)
    response = api.client.get(
        f"/buyers/{buyer.address}/statement",
        headers={"Authorization": f"Bearer {theirs['secret']}"},
    )
    _error(response, 403, "forbidden")


def test_a_statement_needs_credentials(api: BuyerApi, buyer: LocalAccount) -> None:
    _error(api.client.get(f"/buyers/{buyer.address}/statement"), 401, "signature_required")
    _error(
        api.client.get(
            f"/buyers/{buyer.address}/statement", headers={"Authorization": "Bearer sk-jm-nope"}
        ),
        401,
        "invalid_api_key",
    )


def test_the_statement_shows_a_credited_deposit(api: BuyerApi, buyer: LocalAccount) -> None:
    with session_scope(api.sessions) as session:
        ledger.credit_deposit(session, buyer.address, 5_000_000, new_tx_hash(), 3)
    response = api.client.get(
        f"/buyers/{buyer.address}/statement", headers=_signed(api, buyer, BuyerAction.STATEMENT)
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["available"], body["held"], body["withdrawing"]) == (5_000_000, 0, 0)
    assert body["deposited"] == 5_000_000
    assert [(line["kind"], line["amount"]) for line in body["lines"]] == [("deposit", 5_000_000)]


# -- signatures ---------------------------------------------------------------------------


def test_a_replayed_signature_is_a_conflict(api: BuyerApi, buyer: LocalAccount) -> None:
    headers = _signed(api, buyer, BuyerAction.LIST_API_KEYS)
    url = f"/buyers/{buyer.address}/api-keys"
    assert api.client.get(url, headers=headers).status_code == 200
    _error(api.client.get(url, headers=headers), 409, "nonce_reused")


def test_a_nonce_is_per_address(api: BuyerApi, buyer: LocalAccount) -> None:
    other: LocalAccount = Account.create()
    for account in (buyer, other):
        headers = _signed(api, account, BuyerAction.LIST_API_KEYS, nonce="1")
        response = api.client.get(f"/buyers/{account.address}/api-keys", headers=headers)
        assert response.status_code == 200, response.text


def test_a_refused_request_does_not_use_up_its_nonce(api: BuyerApi, buyer: LocalAccount) -> None:
    headers = _signed(api, buyer, BuyerAction.REVOKE_API_KEY)
    url = f"/buyers/{buyer.address}/api-keys/1"
    _error(api.client.delete(url, headers=headers), 404, "buyer_not_found")
    _create_key(api, buyer)
    assert api.client.delete(url, headers=headers).status_code == 200


def test_expired_nonces_are_purged(api: BuyerApi, buyer: LocalAccount) -> None:
    from sqlalchemy import func, select

    from market.buyers.nonces import UsedNonce

    now = int(time.time())
    old = _signed(api, buyer, BuyerAction.LIST_API_KEYS, now=now - 100, lifetime_s=101)
    assert api.client.get(f"/buyers/{buyer.address}/api-keys", headers=old).status_code == 200
    time.sleep(2.1)
    fresh = _signed(api, buyer, BuyerAction.LIST_API_KEYS)
    assert api.client.get(f"/buyers/{buyer.address}/api-keys", headers=fresh).status_code == 200
    with api.sessions() as session:
        assert session.scalar(select(func.count()).select_from(UsedNonce)) == 1


@pytest.mark.parametrize(
    ("case", "status", "code"),
    [
        ("expired", 401, "signature_expired"),
        ("too_far_ahead", 401, "signature_lifetime_too_long"),
        ("wrong_address", 403, "signature_mismatch"),
        ("wrong_chain", 403, "signature_mismatch"),
        ("wrong_contract", 403, "signature_mismatch"),
        ("wrong_action", 403, "signature_mismatch"),
        ("missing", 401, "signature_required"),
        ("garbled", 401, "signature_required"),
    ],
)
def test_bad_signatures_are_refused(
    api: BuyerApi, buyer: LocalAccount, case: str, status: int, code: str
) -> None:
    now = int(time.time())
    address: str = buyer.address
    action = BuyerAction.CREATE_API_KEY
    domain = api.domain
    headers: dict[str, str] = {}
    match case:
        case "expired":
            headers = sign_request(buyer, action, domain, now - 200, lifetime_s=100)
        case "too_far_ahead":
            headers = sign_request(buyer, action, domain, now, lifetime_s=MAX_LIFETIME_S + 60)
        case "wrong_address":
            address = new_address()
            headers = sign_request(buyer, action, domain, now)
        case "wrong_chain":
            wrong = Domain(
                chain_id=domain.chain_id + 1, settlement_contract=domain.settlement_contract
            )
            headers = sign_request(buyer, action, wrong, now)
        case "wrong_contract":
            wrong = Domain(chain_id=domain.chain_id, settlement_contract=new_address())
            headers = sign_request(buyer, action, wrong, now)
        case "wrong_action":
            headers = sign_request(buyer, BuyerAction.STATEMENT, domain, now)
        case "garbled":
            headers = sign_request(buyer, action, domain, now)
            headers["X-Buyer-Message"] = "%%%"
    response = api.client.post(f"/buyers/{address}/api-keys", headers=headers)
    _error(response, status, code)
    listed = api.client.get(
        f"/buyers/{buyer.address}/api-keys", headers=_signed(api, buyer, BuyerAction.LIST_API_KEYS)
    )
    assert listed.json() == []


def test_a_bad_path_address_is_invalid(api: BuyerApi, buyer: LocalAccount) -> None:
    response = api.client.get(
        "/buyers/0x1234/api-keys", headers=_signed(api, buyer, BuyerAction.LIST_API_KEYS)
    )
    _error(response, 422, "invalid_address")
