"""What the operator sees of payment reviews."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field


class ReviewReasonRead(BaseModel):
    """One failed check that opened or extended a review."""

    model_config = ConfigDict(from_attributes=True)

    source: str = Field(description='"attestation" or "receipt": what triggered it.')
    attestation_seq: int | None
    job_id: str | None
    check: str
    kind: str = Field(description="physics, data, consistency or hygiene.")
    reason: str
    created_at: datetime


class ReviewRead(BaseModel):
    """A payment review: whose payment it holds, where it stands, how it was decided."""

    id: int
    provider: str
    status: str = Field(description="open (payment held), released or voided.")
    opened_at: datetime
    updated_at: datetime = Field(description="When a failed check last opened or extended it.")
    decided_at: datetime | None
    decided_by: str | None
    note: str | None
    reversed_receipts: int | None = Field(description="Voided: receipts whose charge reversed.")
    reversed_amount: int | None = Field(description="Voided: charges returned to buyers.")


class ReviewDetail(ReviewRead):
    """A review with its reasons and what it withholds now."""

    reasons: list[ReviewReasonRead]
    withheld_receipts: int = Field(
        description="Open: the provider's receipts in no epoch, left out of settlement."
    )
    withheld_amount: int = Field(description="Open: their charges, payment-token base units.")
