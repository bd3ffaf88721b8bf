"""The buyer's API key as OpenAI clients send it: `Authorization: Bearer <key>`."""

from __future__ import annotations

from typing import Annotated

from fastapi import Header

from market.errors import AuthenticationError


def bearer_key(authorization: Annotated[str | None, Header()] = None) -> str:
    """FastAPI dependency: the raw key (checked later, in the request's first transaction)."""
    scheme, _, key = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise AuthenticationError(
            "You didn't provide an API key: send `Authorization: Bearer <key>`."
        )
    return key.strip()
