"""What the ledger shows the outside: transfers, holds, balances and statements.

Amounts are integers in the payment token's base units (6 decimals on the local testnet).
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from market.ledger.models import HoldStatus, Transfer, TransferKind


class PostingRead(BaseModel):
    """One leg of a transfer."""

    account: str
    amount: int


class TransferRead(BaseModel):
    """One journal entry."""

    id: int
    kind: TransferKind
    idempotency_key: str
    job_id: str | None
    epoch: int | None
    tx_hash: str | None
    log_index: int | None
    created_at: datetime
    postings: list[PostingRead]

    @classmethod
    def of(cls, transfer: Transfer) -> TransferRead:
        """The schema of a stored transfer."""
        return cls(
            id=transfer.id,
            kind=transfer.kind,
            idempotency_key=transfer.idempotency_key,
            job_id=transfer.job_id,
            epoch=transfer.epoch,
            tx_hash=transfer.tx_hash,
            log_index=transfer.log_index,
            created_at=transfer.created_at,
            postings=[
                PostingRead(account=p.account.name, amount=p.amount) for p in transfer.postings
            ],
        )


class HoldRead(BaseModel):
    """A job's hold and how it ended."""

    model_config = ConfigDict(from_attributes=True)

    job_id: str
    buyer: str
    amount: int
    status: HoldStatus
    provider: str | None
    charged: int | None
    fee: int | None
    created_at: datetime
    closed_at: datetime | None


class StatementLine(BaseModel):
    """One movement on one of the owner's accounts."""

    transfer_id: int
    kind: TransferKind
    account: str
    amount: int = Field(description="Signed: positive credits the account, negative debits it.")
    job_id: str | None
    epoch: int | None
    tx_hash: str | None
    log_index: int | None
    created_at: datetime


class Statement(BaseModel):
    """An owner's balances and what moved them, in base units.

    For a buyer: `available` + `held` is what it has in escrow as far as the market knows;
    `deposited` - `charged` - `withdrawn` = `available` + `held`.
    For a provider: `earned` is what it has earned and not yet been settled on-chain.
    """

    owner: str
    balances: dict[str, int] = Field(description="Balance per bucket (available, held, earned).")
    available: int
    held: int
    earned: int
    deposited: int = Field(description="Deposits credited from the chain.")
    holds_placed: int = Field(description="Total ever placed on hold.")
    charged: int = Field(description="Total charged for jobs (provider share plus fee).")
    released: int = Field(description="Total returned from holds to available.")
    withdrawn: int = Field(description="Total that left escrow by withdrawal.")
    lines: list[StatementLine] = Field(description="Newest first, at most `limit` of them.")
