"""HTTP routes of the settlement package: epochs and receipt inclusion proofs."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import APIRouter, Depends, Query
from sqlalchemy.orm import Session

from market.api_errors import MarketErrorRoute
from market.runtime import Runtime, get_runtime, transaction
from market.settlement import service
from market.settlement.schemas import EpochDetail, EpochRead, ReceiptProof


def db(runtime: Annotated[Runtime, Depends(get_runtime)]) -> Iterator[Session]:
    """The request's transaction."""
    yield from transaction(runtime)


router = APIRouter(tags=["settlement"], route_class=MarketErrorRoute)
DB = Annotated[Session, Depends(db)]


@router.get("/epochs", response_model=list[EpochRead])
def list_epochs(
    session: DB,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    before: Annotated[int | None, Query(ge=1)] = None,
) -> list[EpochRead]:
    """Epochs, newest first; a submitted one with the settlement tx it waits on."""
    return service.list_epochs(session, limit, before)


@router.get("/epochs/{number}", response_model=EpochDetail)
def get_epoch(number: int, session: DB) -> EpochDetail:
    """One epoch: status, root, tx (or, while submitted, the tx it waits on), totals, debit
    and credit lines."""
    return service.get_epoch(session, number)


@router.get("/receipts/{job_id}/proof", response_model=ReceiptProof)
def receipt_proof(
    job_id: str, session: DB, runtime: Annotated[Runtime, Depends(get_runtime)]
) -> ReceiptProof:
    """The receipt's Merkle proof in its settled epoch, for `verifyReceipt` on-chain."""
    proof = service.receipt_proof(session, job_id)
    return proof.model_copy(
        update={"settlement_contract": runtime.chain.domain.settlement_contract}
    )
