"""What the buyers package shows: buyers, API keys (never their hash), a new key once."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from market.jobs.energy import EnergySummary
from market.ledger.schemas import Statement


class BuyerRead(BaseModel):
    """A buyer."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    address: str
    created_at: datetime


class ApiKeyRead(BaseModel):
    """An API key as listed: its prefix identifies it, the rest is never stored."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str | None
    prefix: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


class ApiKeyCreated(BaseModel):
    """A new API key with the secret itself, which the market cannot show again."""

    key: ApiKeyRead
    secret: SecretStr = Field(description="The whole key, e.g. sk-jm-...; shown only now.")


class ApiKeyCreate(BaseModel):
    """What a buyer may say about a new key: a name to tell it apart."""

    name: str | None = Field(default=None, min_length=1, max_length=100)


class ApiKeyIssued(ApiKeyRead):
    """A new API key with the whole key in clear, which the market cannot show again."""

    secret: str = Field(description="The whole key, e.g. sk-jm-...; shown only in this answer.")


class BuyerStatement(Statement):
    """A buyer's statement, with the escrow whose withdrawal is pending on-chain."""

    withdrawing: int = Field(description="Escrow with a withdrawal requested, not yet paid out.")
    energy: EnergySummary = Field(
        description="Energy of every request charged to the buyer: GPU joules, wall kWh, "
        "energy cost and gCO2 over metered receipts; unmeasured ones counted apart."
    )
