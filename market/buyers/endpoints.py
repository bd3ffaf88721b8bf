"""HTTP routes of the buyers package: a buyer's API keys and statement.

Every route is authorised by a request the buyer signed with its address's key
(`market.buyers.signin`); the statement also accepts one of the buyer's API keys. Errors are
answered in the market's own body, `{"error": {"code", "message"}}`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Path, Query, status
from sqlalchemy.orm import Session

from market.addresses import checksum_address
from market.api_errors import MarketErrorRoute, transaction
from market.buyers import service
from market.buyers.nonces import consume_nonce
from market.buyers.schemas import (
    MAX_BIGINT,
    ApiKeyCreate,
    ApiKeyIssued,
    ApiKeyRead,
    ApiKeyUpdate,
    BuyerStatement,
)
from market.buyers.signin import BuyerAction, read_request, verify_request
from market.errors import BuyerNotFoundError, ForbiddenError
from market.inference.auth import bearer_key
from market.runtime import Runtime, get_runtime

router = APIRouter(tags=["buyers"], route_class=MarketErrorRoute)


DB = Annotated[Session, Depends(transaction, scope="function")]
KeyId = Annotated[int, Path(ge=1, le=MAX_BIGINT)]
"""A key's id: a positive BIGINT (a larger one is 422, not a database overflow)."""
"""The request's transaction: the nonce is consumed in it, and rolled back if the request fails."""
MessageHeader = Annotated[str | None, Header(alias="X-Buyer-Message")]
SignatureHeader = Annotated[str | None, Header(alias="X-Buyer-Signature")]


def _check_signed(
    session: Session,
    runtime: Runtime,
    address: str,
    action: BuyerAction,
    message: str | None,
    signature: str | None,
) -> str:
    request, signer = read_request(message, signature)
    now = int(time.time())
    verify_request(
        request, signer, address=address, action=action, domain=runtime.chain.domain, now=now
    )
    consume_nonce(session, request.address, request.nonce, request.expires_at, now)
    return request.address


def signed(action: BuyerAction) -> Callable[..., str]:
    """A dependency: the path's buyer address, once a request signed for `action` is checked."""

    def dependency(
        address: str,
        session: DB,
        runtime: Annotated[Runtime, Depends(get_runtime)],
        message: MessageHeader = None,
        signature: SignatureHeader = None,
    ) -> str:
        return _check_signed(session, runtime, address, action, message, signature)

    return dependency


def statement_reader(
    address: str,
    session: DB,
    runtime: Annotated[Runtime, Depends(get_runtime)],
    authorization: Annotated[str | None, Header()] = None,
    message: MessageHeader = None,
    signature: SignatureHeader = None,
) -> str:
    """The path's buyer address, once an API key of that buyer or a signed request is checked."""
    if authorization is None:
        return _check_signed(session, runtime, address, BuyerAction.STATEMENT, message, signature)
    buyer = service.authenticate(session, bearer_key(authorization))
    if buyer.address != checksum_address(address):
        raise ForbiddenError("this API key belongs to another buyer")
    return buyer.address


@router.post(
    "/buyers/{address}/api-keys",
    response_model=ApiKeyIssued,
    status_code=status.HTTP_201_CREATED,
)
def create_api_key(
    session: DB,
    buyer_address: Annotated[str, Depends(signed(BuyerAction.CREATE_API_KEY))],
    body: ApiKeyCreate | None = None,
) -> ApiKeyIssued:
    """A new API key for the buyer (created on first sight), with optional budgets; the key
    is shown only here."""
    buyer = service.get_or_create_buyer(session, buyer_address)
    created = service.create_api_key(session, buyer, body.name if body else None, body)
    return ApiKeyIssued(**created.key.model_dump(), secret=created.secret.get_secret_value())


@router.get("/buyers/{address}/api-keys", response_model=list[ApiKeyRead])
def list_api_keys(
    session: DB,
    buyer_address: Annotated[str, Depends(signed(BuyerAction.LIST_API_KEYS))],
) -> list[ApiKeyRead]:
    """The buyer's keys, revoked ones included, oldest first (none for an unknown buyer)."""
    try:
        buyer = service.get_buyer(session, buyer_address)
    except BuyerNotFoundError:
        return []
    return service.list_api_keys(session, buyer)


@router.delete("/buyers/{address}/api-keys/{key_id}", response_model=ApiKeyRead)
def revoke_api_key(
    key_id: KeyId,
    session: DB,
    buyer_address: Annotated[str, Depends(signed(BuyerAction.REVOKE_API_KEY))],
) -> ApiKeyRead:
    """Revokes one of the buyer's keys (404 if it is not the buyer's); revoking twice is fine."""
    buyer = service.get_buyer(session, buyer_address)
    return service.revoke_api_key(session, buyer, key_id)


@router.patch("/buyers/{address}/api-keys/{key_id}", response_model=ApiKeyRead)
def update_api_key(
    key_id: KeyId,
    body: ApiKeyUpdate,
    session: DB,
    buyer_address: Annotated[str, Depends(signed(BuyerAction.UPDATE_API_KEY))],
) -> ApiKeyRead:
    """Changes a key's budgets (those in the body; null removes one); 404 if not the buyer's."""
    buyer = service.get_buyer(session, buyer_address)
    return service.update_api_key(session, buyer, key_id, body)


@router.get("/buyers/{address}/statement", response_model=BuyerStatement)
def statement(
    session: DB,
    buyer_address: Annotated[str, Depends(statement_reader)],
    limit: Annotated[int, Query(ge=0, le=1000)] = 100,
) -> BuyerStatement:
    """The buyer's balances (available, held, withdrawing), totals and latest movements."""
    return service.buyer_statement(session, buyer_address, limit)
