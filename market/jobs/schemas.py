"""What the jobs API answers: a job with its receipt and charge."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict

from market.jobs.models import JobStatus


class ReceiptRead(BaseModel):
    """A verified receipt as the market stored it; `envelope` is what the provider signed."""

    model_config = ConfigDict(from_attributes=True)

    receipt_hash: str
    provider_address: str
    prompt_tokens: int
    completion_tokens: int
    charge: int
    fee: int
    energy_method: str
    energy_mj: int | None
    first_token_at_ms: int | None
    finished_at_ms: int
    epoch: int | None
    envelope: dict[str, Any]
    status: str = "complete"
    """The receipt's status: "complete", or "interrupted" (charged for delivered tokens)."""
    interrupted_reason: str | None = None


class JobRead(BaseModel):
    """One job: where it was routed, what was held, and (when completed) its receipt.

    A job whose stream broke off after tokens were delivered is `completed` with an
    interrupted receipt and `error` = "interrupted (<reason>): ..."."""

    id: str
    status: JobStatus
    model: str
    stream: bool
    provider_address: str
    hold_amount: int
    price_in_per_mtok: int
    price_out_per_mtok: int
    charge: int
    fee: int
    created_at: datetime
    finished_at: datetime | None
    error: str | None
    receipt: ReceiptRead | None
