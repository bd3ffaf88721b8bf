"""Whether the chain can still debit each buyer an epoch is about to debit.

The market charges a buyer when it verifies a receipt; the contract debits the buyer's escrow
only when the epoch settles. In between, a buyer may ask the contract to withdraw more than
the ledger leaves free (the contract knows only the escrow) and, once the withdrawal delay
has passed, take it. An epoch that debits such a buyer beyond its escrow reverts whole
(`InsufficientEscrow`), and since epochs settle in order, no provider would be paid again.

So before an epoch is built, each buyer's debit is compared with what the chain will surely
still hold for that buyer when the batch lands: its escrow, less a pending withdrawal that
may be taken first (one usable within `WITHDRAWAL_MARGIN_S` of the chain's clock). Of a
buyer whose debit is not covered (`Shortfall`) the epoch takes only the oldest receipts whose
charges together fit in what is covered (none if the oldest does not fit), so its providers
are paid what the escrow still holds; the buyer's other receipts stay in no epoch, charged
in the ledger, and a later epoch settles them once the escrow covers them again (a new
deposit, or a withdrawal request replaced by a smaller one).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from protocol.chain.settlement import SettlementClient

WITHDRAWAL_MARGIN_S = 600
"""A pending withdrawal usable this soon (chain seconds) may be taken before the batch is
mined: from building the epoch to a resubmission (`RESUBMIT_AFTER`) with room to spare."""


@dataclass(frozen=True)
class Shortfall:
    """A buyer the chain cannot be counted on to debit `debit`: it covers only `covered`."""

    buyer: str
    debit: int
    covered: int


def shortfalls(
    client: SettlementClient, debits: Mapping[str, int], margin_s: int = WITHDRAWAL_MARGIN_S
) -> list[Shortfall]:
    """The buyers of `debits` (address -> base units) whose debit the chain may not cover,
    by address (every buyer's escrow and pending withdrawal read with `escrowsOf`, one call
    per few hundred buyers)."""
    buyers = sorted(buyer for buyer, debit in debits.items() if debit > 0)
    if not buyers:
        return []
    now = client.latest_block_timestamp()
    short = []
    for buyer, (escrow, amount, usable_at) in zip(buyers, client.escrows_of(buyers), strict=True):
        leaving = min(amount, escrow) if usable_at and usable_at <= now + margin_s else 0
        if debits[buyer] > escrow - leaving:
            short.append(Shortfall(buyer, debits[buyer], escrow - leaving))
    return short
