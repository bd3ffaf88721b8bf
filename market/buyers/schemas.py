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
    budget_money: int | None = Field(
        default=None, description="Money budget in payment-token base units (None: no limit)."
    )
    budget_wall_mwh: int | None = Field(
        default=None, description="Wall-energy budget in mWh (1 kWh = 1_000_000 mWh)."
    )
    budget_gco2_mg: int | None = Field(default=None, description="Carbon budget in mg of CO2.")
    spent_money: int = Field(default=0, description="Charged so far, in base units.")
    spent_wall_mwh: int = Field(
        default=0, description="Measured wall energy so far, in mWh (unmeasured: 0)."
    )
    spent_gco2_mg: int = Field(default=0, description="Measured carbon so far, in mg CO2.")


class ApiKeyCreated(BaseModel):
    """A new API key with the secret itself, which the market cannot show again."""

    key: ApiKeyRead
    secret: SecretStr = Field(description="The whole key, e.g. sk-jm-...; shown only now.")


MAX_MONEY = 2**256 - 1
MAX_BIGINT = 2**63 - 1


class ApiKeyBudgets(BaseModel):
    """A key's optional budgets; None (or absent) is no limit. Integers, never negative."""

    model_config = ConfigDict(extra="forbid")

    budget_money: int | None = Field(
        default=None, ge=0, le=MAX_MONEY, description="Payment-token base units."
    )
    budget_wall_mwh: int | None = Field(
        default=None, ge=0, le=MAX_BIGINT, description="Wall energy, mWh (1 kWh = 1e6 mWh)."
    )
    budget_gco2_mg: int | None = Field(
        default=None, ge=0, le=MAX_BIGINT, description="Carbon, mg of CO2 (1 g = 1000 mg)."
    )


class ApiKeyCreate(ApiKeyBudgets):
    """What a buyer may say about a new key: a name to tell it apart, and its budgets."""

    name: str | None = Field(
        default=None, min_length=1, max_length=100, pattern=r"^[^\x00-\x1f\x7f]*$"
    )
    """Any text without control characters (PostgreSQL stores no NUL)."""


class ApiKeyUpdate(ApiKeyBudgets):
    """`PATCH`: the budgets given are set (null: no limit); those left out are kept."""


class ApiKeyIssued(ApiKeyRead):
    """A new API key with the whole key in clear, which the market cannot show again."""

    secret: str = Field(description="The whole key, e.g. sk-jm-...; shown only in this answer.")


class BuyerStatement(Statement):
    """A buyer's statement, with the escrow whose withdrawal is pending on-chain."""

    withdrawing: int = Field(description="Escrow with a withdrawal requested, not yet paid out.")
    owed: int = Field(
        default=0,
        description="Escrow the buyer withdrew that the market had charged and not yet settled; "
        "the buyer's next deposits repay it first (docs/contracts.md).",
    )
    energy: EnergySummary = Field(
        description="Energy of every request charged to the buyer: GPU joules, wall kWh, "
        "energy cost and gCO2 over metered receipts; unmeasured ones counted apart."
    )
