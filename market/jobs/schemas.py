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


class JobSummary(BaseModel):
    """One row of a buyer's job history (`GET /jobs`): the job and, once a receipt was
    verified, its tokens, charge and energy. `energy` is the same block the completion's
    response carried (`method`, `joules`, wall kWh, cost, gCO2 and their factors; every figure
    null when unmeasured, never 0); tokens, `energy` and `receipt_status` are null while the
    job has no receipt."""

    id: str
    status: JobStatus
    model: str
    stream: bool
    provider_address: str
    created_at: datetime
    finished_at: datetime | None
    error: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    charge: int
    receipt_status: str | None
    epoch: int | None
    energy: dict[str, Any] | None
