"""The buyer's routing preferences: the optional `provider` object of a completion request."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictInt, model_validator


def null_is(default: Any) -> BeforeValidator:
    """For an optional field that is never None: `null` in the request means `default`, as
    OpenAI's API reads a null optional parameter (the schema shows the field as nullable)."""
    return BeforeValidator(
        lambda value: default if value is None else value,
        json_schema_input_type=type(default) | None,
    )


SortKey = Literal["price", "latency", "throughput", "energy", "carbon", "energy_cost"]


class MaxPrice(BaseModel):
    """Price caps per million tokens, in payment-token base units."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt: StrictInt | None = Field(default=None, ge=0)
    completion: StrictInt | None = Field(default=None, ge=0)


class ProviderPreferences(BaseModel):
    """What the buyer asks of the provider that serves the request; unknown fields are refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sort: SortKey | None = None
    max_price: MaxPrice | None = None
    only: list[str] | None = Field(default=None, max_length=1_000)
    ignore: list[str] | None = Field(default=None, max_length=1_000)
    allow_fallbacks: Annotated[bool, null_is(True)] = True
    regions: list[str] | None = Field(default=None, max_length=100)
    max_gco2_per_mtok: float | None = Field(default=None, ge=0)
    max_joules_per_token: float | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _only_and_ignore_disjoint(self) -> ProviderPreferences:
        if self.only and self.ignore and set(self.only) & set(self.ignore):
            raise ValueError("a provider cannot be in both `only` and `ignore`")
        return self
