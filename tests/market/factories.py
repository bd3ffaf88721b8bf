"""Plain factory functions for the market's tests: call them, get a row or a value."""

from __future__ import annotations

import secrets

from eth_utils.address import to_checksum_address
from sqlalchemy.orm import Session

from market.buyers.models import Buyer
from market.buyers.service import get_or_create_buyer
from market.jobs.service import JobOrder
from market.ledger import service as ledger


def new_address() -> str:
    """A random checksummed EVM address."""
    return str(to_checksum_address("0x" + secrets.token_hex(20)))


def new_tx_hash() -> str:
    """A random transaction hash."""
    return "0x" + secrets.token_hex(32)


def new_job_id() -> str:
    """A random job id."""
    return "job-" + secrets.token_hex(8)


def funded_buyer(session: Session, amount: int) -> str:
    """The address of a new buyer whose deposit of `amount` has been credited (flushed)."""
    buyer = new_address()
    ledger.credit_deposit(session, buyer, amount, new_tx_hash(), 0)
    return buyer


def buyer_row(session: Session, address: str | None = None) -> Buyer:
    """A buyer row (flushed), for a random address unless one is given."""
    return get_or_create_buyer(session, address or new_address())


def job_order(
    job_id: str,
    buyer: str,
    provider: str,
    model: str,
    *,
    price_in: int = 1,
    price_out: int = 1,
    hold: int = 10**6,
) -> JobOrder:
    """A non-streamed job's order, its hold `hold` and its completion limit as large."""
    return JobOrder(
        job_id=job_id,
        buyer=buyer,
        provider=provider,
        model=model,
        stream=False,
        price_in=price_in,
        price_out=price_out,
        hold=hold,
        max_tokens=hold,
    )
