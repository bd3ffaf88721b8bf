"""What the settlement package shows: epochs, their lines, and receipt proofs."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from market.settlement.models import EpochStatus, LineKind


class EpochRead(BaseModel):
    """An epoch: its root, counts and totals (base units), and the tx that settled it."""

    model_config = ConfigDict(from_attributes=True)

    number: int
    status: EpochStatus
    receipts_root: str
    receipt_count: int
    total_debit: int = Field(description="Sum of the buyers' debits (the receipts' charges).")
    total_credit: int = Field(description="Sum of the providers' credits (charge - fee).")
    fee: int = Field(description="Protocol fee of the epoch; debit = credit + fee.")
    tx_hash: str | None
    block: int | None
    created_at: datetime
    submitted_at: datetime | None
    settled_at: datetime | None


class LineRead(BaseModel):
    """One buyer's debit or one provider's credit."""

    model_config = ConfigDict(from_attributes=True)

    kind: LineKind
    address: str
    amount: int


class EpochDetail(EpochRead):
    """An epoch with its lines."""

    lines: list[LineRead]


class ReceiptProof(BaseModel):
    """Everything `verifyReceipt(epoch, receiptHash, proof)` needs, and the root it checks."""

    job_id: str
    epoch: int
    leaf_index: int
    receipt_hash: str
    proof: list[str] = Field(description="Sibling hashes from the leaf up, 0x-hex.")
    root: str
    settlement_contract: str | None = None
