"""API key budgets over the buyer API: set at creation, listed, changed by a signed PATCH."""

from __future__ import annotations

from typing import Any

from eth_account import Account
from eth_account.signers.local import LocalAccount

from market.buyers.signin import BuyerAction, sign_request
from tests.market.buyers_api.conftest import BuyerApi


def _create(api: BuyerApi, buyer: LocalAccount, body: dict[str, Any]) -> Any:
    return api.client.post(
        f"/buyers/{buyer.address}/api-keys",
        json=body,
        headers=sign_request(buyer, BuyerAction.CREATE_API_KEY, api.domain),
    )


def _patch(api: BuyerApi, buyer: LocalAccount, key_id: int, body: dict[str, Any]) -> Any:
    return api.client.patch(
        f"/buyers/{buyer.address}/api-keys/{key_id}",
        json=body,
        headers=sign_request(buyer, BuyerAction.UPDATE_API_KEY, api.domain),
    )


def _listed(api: BuyerApi, buyer: LocalAccount) -> list[dict[str, Any]]:
    response = api.client.get(
        f"/buyers/{buyer.address}/api-keys",
        headers=sign_request(buyer, BuyerAction.LIST_API_KEYS, api.domain),
    )
    assert response.status_code == 200, response.text
    keys: list[dict[str, Any]] = response.json()
    return keys


def test_budgets_are_set_listed_and_changed(api: BuyerApi, buyer: LocalAccount) -> None:
    big = 10**30  # money is uint256 base units
    created = _create(api, buyer, {"name": "ci", "budget_money": big, "budget_gco2_mg": 5000})
    assert created.status_code == 201, created.text
    key = created.json()
    assert (key["budget_money"], key["budget_wall_mwh"], key["budget_gco2_mg"]) == (
        big,
        None,
        5000,
    )
    assert (key["spent_money"], key["spent_wall_mwh"], key["spent_gco2_mg"]) == (0, 0, 0)

    patched = _patch(api, buyer, key["id"], {"budget_wall_mwh": 2_000_000, "budget_gco2_mg": None})
    assert patched.status_code == 200, patched.text
    listed = _listed(api, buyer)[0]
    assert (listed["budget_money"], listed["budget_wall_mwh"], listed["budget_gco2_mg"]) == (
        big,  # not in the body: kept
        2_000_000,
        None,  # null: no limit
    )
    assert listed["spent_money"] == 0


def test_a_key_without_budgets_lists_none(api: BuyerApi, buyer: LocalAccount) -> None:
    created = _create(api, buyer, {"name": "plain"})
    assert created.status_code == 201, created.text
    listed = _listed(api, buyer)[0]
    assert (listed["budget_money"], listed["budget_wall_mwh"], listed["budget_gco2_mg"]) == (
        None,
        None,
        None,
    )


def test_negative_or_fractional_budgets_are_invalid(api: BuyerApi, buyer: LocalAccount) -> None:
    for body in ({"budget_money": -1}, {"budget_wall_mwh": -5}, {"budget_gco2_mg": 1.5}):
        response = _create(api, buyer, body)
        assert response.status_code == 422, response.text
        assert response.json()["error"]["code"] == "invalid_request"
    assert _listed(api, buyer) == []
    key_id = _create(api, buyer, {}).json()["id"]
    response = _patch(api, buyer, key_id, {"budget_gco2_mg": -1})
    assert response.status_code == 422, response.text
    response = _patch(api, buyer, key_id, {"budget_kwh": 1})  # unknown field
    assert response.status_code == 422, response.text
    assert _listed(api, buyer)[0]["budget_gco2_mg"] is None


def test_patch_needs_its_own_signed_action_and_the_buyers_key(
    api: BuyerApi, buyer: LocalAccount
) -> None:
    key_id = _create(api, buyer, {}).json()["id"]
    wrong = api.client.patch(
        f"/buyers/{buyer.address}/api-keys/{key_id}",
        json={"budget_money": 1},
        headers=sign_request(buyer, BuyerAction.REVOKE_API_KEY, api.domain),
    )
    assert wrong.status_code == 403, wrong.text
    assert wrong.json()["error"]["code"] == "signature_mismatch"
    unsigned = api.client.patch(
        f"/buyers/{buyer.address}/api-keys/{key_id}", json={"budget_money": 1}
    )
    assert unsigned.status_code == 401, unsigned.text
    other: LocalAccount = Account.create()
    _create(api, other, {})
    response = _patch(api, other, key_id, {"budget_money": 1})
    assert response.status_code == 404, response.text
    assert response.json()["error"]["code"] == "api_key_not_found"
    assert _listed(api, buyer)[0]["budget_money"] is None
