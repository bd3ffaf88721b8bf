"""What the settlement package shows: epochs, their lines, and receipt proofs."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from market.settlement.models import EpochStatus, LineKind


class PendingTransaction(BaseModel):
    """The settlement transaction a submitted epoch waits on: the last one sent (a later send
    replaces an earlier one still waiting, at the same nonce and higher fees). Read from the
    epoch's `sent_*` columns."""

    model_config = ConfigDict(from_attributes=True)

    tx_hash: str = Field(validation_alias="sent_tx_hash")
    nonce: int = Field(validation_alias="sent_nonce")
    max_fee_per_gas: int = Field(
        validation_alias="sent_max_fee_per_gas", description="maxFeePerGas offered, wei."
    )
    max_priority_fee_per_gas: int = Field(
        validation_alias="sent_max_priority_fee_per_gas",
        description="maxPriorityFeePerGas offered, wei.",
    )
    sent_at: datetime


class EpochRead(BaseModel):
    """An epoch: its root, counts and totals (base units), the tx that settled it, and while
    it is submitted, the tx it waits on."""

    model_config = ConfigDict(from_attributes=True)

    number: int
    status: EpochStatus
    receipts_root: str
    receipt_count: int
    total_debit: int = Field(description="Sum of the buyers' debits (the receipts' charges).")
    total_credit: int = Field(description="Sum of the providers' credits (charge - fee).")
    fee: int = Field(description="Protocol fee of the epoch; debit = credit + fee.")
    total_reward: int = Field(
        default=0, description="Network-token base units minted as rewards with the epoch."
    )
    reward_note: str | None = Field(
        default=None, description="How the rewards were decided, or why there are none."
    )
    tx_hash: str | None = Field(description="The settlement transaction mined (once settled).")
    block: int | None
    pending_tx: PendingTransaction | None = Field(
        default=None,
        description="While submitted: the settlement transaction last sent, not yet booked.",
    )
    created_at: datetime
    submitted_at: datetime | None
    settled_at: datetime | None


class LineRead(BaseModel):
    """One buyer's debit, one provider's credit (payment-token base units) or one provider's
    reward (network-token base units)."""

    model_config = ConfigDict(from_attributes=True)

    kind: LineKind
    address: str
    amount: int


class RewardWeightRead(BaseModel):
    """How one provider's work on one model weighed in the epoch's rewards."""

    model_config = ConfigDict(from_attributes=True)

    address: str
    model: str
    tokens_base: int = Field(description="Verified output tokens without measured energy.")
    tokens_measured: int = Field(description="Verified output tokens with measured energy.")
    joules_per_token: str | None = Field(description="GPU J per measured output token.")
    multiplier_milli: int = Field(description="Efficiency multiplier of the measured tokens.")
    weight: int = Field(description="tokens_base x 1000 + tokens_measured x multiplier_milli.")
    reason: str
    excluded: str | None = Field(description="Why it earned nothing (e.g. not active).")


class EpochDetail(EpochRead):
    """An epoch with its lines and the reward weights behind its reward lines."""

    lines: list[LineRead]
    reward_weights: list[RewardWeightRead] = Field(default_factory=list)


class ReceiptProof(BaseModel):
    """Everything `verifyReceipt(epoch, receiptHash, proof)` needs, and the root it checks."""

    job_id: str
    epoch: int
    leaf_index: int
    receipt_hash: str
    proof: list[str] = Field(description="Sibling hashes from the leaf up, 0x-hex.")
    root: str
    settlement_contract: str | None = None
