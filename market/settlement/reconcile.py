"""The ledger against the chain: a check that the books add up to what the contract holds.

`reconcile` reads the ledger in one database snapshot, and the contract as of block B, the
last block the chain watcher has booked (every event up to B is in the ledger, none after:
`service.watch_chain`). It compares:

1. Holdings, always. The contract holds `totalEscrow + totalEarnings + accruedFees`. The
   ledger says buyers deposited that much, less everything withdrawn: the balance of the
   chain's contra account `chain:escrow`, negated.
2. Tokens, always. The payment tokens the contract owns must be at least (1). More is a
   surplus (tokens sent to the contract directly), reported but not a difference.
3. Accounts, when the ledger has booked exactly the epochs the chain had settled at B.
   Otherwise a settlement sits between the two (mined, not yet buried and booked) and
   `accounts_compared` is False.
   - Each buyer's `escrow` against available + held + withdrawing + overdrawn, plus the
     buyer's charges that no settled epoch holds yet (charged at the market, not yet
     debited on-chain).
   - Each provider's `earnings` against its `settled` account.
   - `accruedFees` against `protocol:fees_settled`.
   - The contract's three totals against the same sums. These also catch an account the
     ledger does not know.
4. The ledger against its receipts, always. Each provider's `earned` (charged, not yet
   settled) against its unsettled receipts' charges less fees, and `protocol:fees`
   against their fees. Then the ledger's own books (`check_ledger`).

Run it on a fresh session. On PostgreSQL it reads at REPEATABLE READ, so the reads see one
instant; on SQLite every transaction already does. It takes no locks and writes nothing,
so requests, the watcher and epoch closes go on. `tasks.reconcile_chain` runs it every
`RECONCILE_INTERVAL_S` and keeps each result (`ChainReconciliation`, `/metrics`).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from sqlalchemy.orm import Session

from market.addresses import checksum_address
from market.errors import LedgerInconsistentError
from market.ledger.models import OwnerKind
from market.ledger.repository import AccountRef, LedgerRepository
from market.ledger.service import CHAIN_ESCROW, PROTOCOL_FEES, check_ledger
from market.settlement.repository import SettlementRepository
from market.settlement.service import CHAIN_CURSOR, PROTOCOL_SETTLED_FEES
from protocol.chain.settlement import SettlementClient

ESCROW_BUCKETS = frozenset(
    {
        (OwnerKind.BUYER, "available"),
        (OwnerKind.BUYER, "held"),
        (OwnerKind.BUYER, "withdrawing"),
        (OwnerKind.CHAIN, "overdrawn"),
    }
)
"""A buyer's accounts that the contract's escrow of that buyer covers (with its unsettled
charges)."""


@dataclass(frozen=True)
class Difference:
    """One figure on which the two sides disagree: `expected` is what the contract (or, for
    the ledger's own accounts, the receipts) says, `booked` what the ledger says."""

    what: str
    expected: int
    booked: int


@dataclass(frozen=True)
class Reconciliation:
    """One check's result (module doc)."""

    block: int
    chain_epoch: int
    ledger_epoch: int
    holdings: int
    """What the contract holds for buyers, providers and the protocol, in base units."""
    token_surplus: int
    """Payment tokens the contract owns beyond `holdings` (sent to it directly)."""
    buyers: int
    providers: int
    accounts_compared: bool
    differences: list[Difference] = field(default_factory=list)
    ledger_error: str | None = None
    """What `check_ledger` found wrong with the books themselves (None: nothing)."""

    @property
    def agrees(self) -> bool:
        """Nothing disagrees."""
        return not self.differences and self.ledger_error is None

    @property
    def count(self) -> int:
        """How many things disagree."""
        return len(self.differences) + (self.ledger_error is not None)


@dataclass
class _Books:
    """The ledger's side, read from one snapshot."""

    escrow_of: dict[str, int] = field(default_factory=dict)
    settled_of: dict[str, int] = field(default_factory=dict)
    earned_of: dict[str, int] = field(default_factory=dict)
    fees: int = 0
    fees_settled: int = 0
    contra: int = 0
    unsettled_of_provider: defaultdict[str, int] = field(default_factory=lambda: defaultdict(int))
    unsettled_fees: int = 0


def reconcile(session: Session, client: SettlementClient) -> Reconciliation | None:
    """Compares the ledger with the contract (module doc); None if the watcher has not
    booked a block yet. Needs a session no statement has run in."""
    if session.get_bind().dialect.name == "postgresql":
        session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
    settlement = SettlementRepository(session)
    position = settlement.cursor_position(CHAIN_CURSOR)
    if position is None or position <= client.deployment.block:
        return None
    block = position - 1
    ledger_epoch = settlement.last_settled_number()
    books = _read_books(session, settlement, ledger_epoch)
    totals = client.totals(block)
    holdings = totals.escrow + totals.earnings + totals.accrued_fees
    diffs = [_diff("contract holdings (escrow + earnings + accrued fees)", holdings, books.contra)]
    if totals.payment_balance < holdings:
        diffs.append(_diff("payment tokens the contract owns", totals.payment_balance, holdings))
    compared = ledger_epoch == totals.last_settled_epoch
    if compared:
        diffs += _compare_accounts(client, block, books, totals.escrow, totals.earnings)
        diffs.append(_diff("accrued fees", totals.accrued_fees, books.fees_settled))
    diffs += [
        _diff(f"earned by {p} (unsettled receipts' charges less fees)", expected, got)
        for p, expected, got in _pairs(books.unsettled_of_provider, books.earned_of)
    ]
    diffs.append(
        _diff("protocol fees (unsettled receipts' fees)", books.unsettled_fees, books.fees)
    )
    try:
        check_ledger(session)
        ledger_error = None
    except LedgerInconsistentError as exc:
        ledger_error = str(exc)
    return Reconciliation(
        block=block,
        chain_epoch=totals.last_settled_epoch,
        ledger_epoch=ledger_epoch,
        holdings=holdings,
        token_surplus=max(0, totals.payment_balance - holdings),
        buyers=len(books.escrow_of),
        providers=len(books.settled_of.keys() | books.earned_of.keys()),
        accounts_compared=compared,
        differences=[d for d in diffs if d is not None],
        ledger_error=ledger_error,
    )


def _read_books(session: Session, settlement: SettlementRepository, epoch: int) -> _Books:
    books = _Books()
    escrow_of: dict[str, int] = defaultdict(int)
    unsettled_of_buyer: dict[str, int] = defaultdict(int)
    unowned: dict[tuple[OwnerKind, str], int] = {}
    for kind, owner, bucket, amount in LedgerRepository(session).owned_balances():
        if owner is None:
            unowned[kind, bucket] = amount
        elif (kind, bucket) in ESCROW_BUCKETS:
            escrow_of[owner] += amount
        elif (kind, bucket) == (OwnerKind.PROVIDER, "settled"):
            books.settled_of[owner] = amount
        elif (kind, bucket) == (OwnerKind.PROVIDER, "earned"):
            books.earned_of[owner] = amount

    def of(ref: AccountRef) -> int:
        return unowned.get((ref.owner_kind, ref.bucket), 0)

    books.fees, books.fees_settled = of(PROTOCOL_FEES), of(PROTOCOL_SETTLED_FEES)
    books.contra = -of(CHAIN_ESCROW)
    for (buyer, provider), (charge, fee) in settlement.unsettled_charges(epoch).items():
        unsettled_of_buyer[checksum_address(buyer)] += charge
        books.unsettled_of_provider[checksum_address(provider)] += charge - fee
        books.unsettled_fees += fee
    books.escrow_of = {
        buyer: escrow_of.get(buyer, 0) + unsettled_of_buyer.get(buyer, 0)
        for buyer in escrow_of.keys() | unsettled_of_buyer.keys()
    }
    return books


def _compare_accounts(
    client: SettlementClient, block: int, books: _Books, escrow: int, earnings: int
) -> list[Difference | None]:
    buyers = sorted(books.escrow_of)
    onchain = {b: e for b, (e, _, _) in zip(buyers, client.escrows_of(buyers, block), strict=True)}
    providers = sorted(books.settled_of)
    diffs: list[Difference | None] = [
        _diff(f"escrow of {b}", onchain[b], books.escrow_of[b]) for b in buyers
    ]
    diffs += [
        _diff(f"earnings of {p}", client.earnings(p, block), books.settled_of[p]) for p in providers
    ]
    diffs.append(_diff("total escrow", escrow, sum(books.escrow_of.values())))
    diffs.append(_diff("total earnings", earnings, sum(books.settled_of.values())))
    return diffs


def _pairs(expected: dict[str, int], booked: dict[str, int]) -> list[tuple[str, int, int]]:
    return [(k, expected.get(k, 0), booked.get(k, 0)) for k in sorted(expected.keys() | booked)]


def _diff(what: str, expected: int, booked: int) -> Difference | None:
    return None if expected == booked else Difference(what, expected, booked)
