"""One try of a request on one provider: its job, ticket, charge or release, and load count.

Database work is one transaction to open the job and one to close it (`run_db`). On a
SQLite file each runs on the event loop when the write lock is free (it never waits for it
there), else in a worker thread, queued for one writer slot (`Runtime.db_writers`) rather
than in SQLite's sleeping busy handler; elsewhere, always in a worker thread. `close()` ends every
attempt: whatever happened, the hold is settled or released and the provider's in-flight
count comes back down.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import lru_cache, partial
from typing import Any, TypeVar

import anyio
from anyio import to_thread
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from market.buyers import budgets
from market.buyers.models import ApiKey
from market.buyers.service import LiveKey, authenticate, cached_key
from market.db import session_scope
from market.energy.accounting import SiteProfile, energy_chain
from market.errors import InsufficientFundsError
from market.inference.agents import ticket_header
from market.inference.errors import QuotaExceededError
from market.jobs import service as jobs
from market.jobs.energy import buyer_energy, energy_method
from market.jobs.errors import ReceiptRejectedError
from market.jobs.service import JobOrder, Usage
from market.providers.site import bare_site
from market.providers.site import site_json as _site_json
from market.routing.table import LiveOffer
from market.runtime import Runtime
from protocol.canonical import to_hex
from protocol.messages import JobTicket, Signed

TICKET_TTL_MS = 60_000
T = TypeVar("T")


@lru_cache(maxsize=1024)
def site_json(site: SiteProfile) -> str:
    """The stored form of an offer's site, encoded once per site (sites are frozen)."""
    return _site_json(site)


def _authenticate(sessions: sessionmaker[Session], raw_key: str) -> str:
    with session_scope(sessions) as session:
        return authenticate(session, raw_key).address


@dataclass(frozen=True)
class KeyContext:
    """The authenticated API key of a request, as later tries need it."""

    buyer: str
    key_id: int
    budgeted: bool
    """The key has any budget (checked, with the key's row locked, on every try)."""
    energy_budgeted: bool
    """The key has an energy or carbon budget: only offers with a published J/token serve it."""

    @classmethod
    def of(cls, key: ApiKey) -> KeyContext:
        """The context of a key just read."""
        energy = budgets.has_energy_budget(key)
        return cls(key.buyer.address, key.id, energy or key.budget_money is not None, energy)

    @classmethod
    def live(cls, key: LiveKey) -> KeyContext:
        """The context of a key from the request path's key cache."""
        return cls(key.buyer, key.key_id, key.budgeted, key.energy_budgeted)


def _open(
    sessions: sessionmaker[Session],
    context: KeyContext | None,
    raw_key: str,
    order: JobOrder,
    worst: budgets.Estimate,
) -> tuple[KeyContext, bool]:
    """Authenticates (first try only), checks the key's budgets for this offer, then places
    the hold and records the job: one commit. (the key, False) when the offer cannot be
    estimated for the key's energy or carbon budget, and nothing was opened."""
    with session_scope(sessions) as session:
        if context is None:
            context = KeyContext.live(cached_key(session, raw_key))
        if context.budgeted:
            key = budgets.lock_key(session, context.key_id)
            context = KeyContext.of(key)
            held = budgets.in_flight_holds(session, key.id) if key.budget_money is not None else 0
            if budgets.check(key, held, order.hold, worst) is not None:
                return context, False
        buyer = context.buyer
        try:
            jobs.open_job(session, replace(order, buyer=buyer, api_key_id=context.key_id))
        except InsufficientFundsError as exc:
            raise QuotaExceededError(
                f"Your balance ({exc.available} base units available) does not cover the "
                f"{exc.requested} this request may cost at most; deposit more or lower "
                "max_tokens."
            ) from exc
        return context, True


def _in_transaction(sessions: sessionmaker[Session], work: Callable[[Session], object]) -> None:
    with session_scope(sessions) as session:
        work(session)


def _locked(exc: OperationalError) -> bool:
    return "database is locked" in str(exc.orig)


async def run_db(runtime: Runtime, fn: Callable[..., T], *args: object) -> T:
    """`fn(sessions, *args)`, one transaction: on the event loop when the database allows
    (`Runtime.inline_sessions`: a SQLite file whose write lock is free now), else in a
    worker thread (queued for SQLite's one writer, `Runtime.db_writers`).

    A thread hop costs more CPU than a request's whole transaction on SQLite, and a worker
    thread contends for the GIL with the loop that relays streams; on the loop, a
    transaction never waits for a lock, so it blocks the loop only for its own work."""
    inline = runtime.inline_sessions()
    if inline is not None:
        try:
            return fn(inline, *args)
        except OperationalError as exc:  # rolled back: nothing of it remains
            if not _locked(exc):
                raise
    return await to_thread.run_sync(fn, runtime.sessions, *args, limiter=runtime.db_writers())


async def authenticate_buyer(runtime: Runtime, raw_key: str) -> str:
    """The buyer's address for a key (`AuthenticationError` if it is not a live key)."""
    return await run_db(runtime, _authenticate, raw_key)


def energy_block(
    method: str, millijoules: int | None, basis: str | None, site: SiteProfile
) -> dict[str, Any]:
    """The `energy` extension buyers see: the receipt's GPU energy (`joules`, null when
    unmeasured; `method`, `basis`) and its whole accounting chain at the routed offer's site
    (docs/energy-accounting.md): wall kWh, energy cost, gCO2, region and every factor with
    its origin. Unmeasured: every figure is null, never 0."""
    return buyer_energy(energy_chain(energy_method(method), millijoules, site), millijoules, basis)


def offer_site(offer: LiveOffer) -> SiteProfile:
    """The offer's site (built at routing refresh), or its region alone."""
    return offer.site if offer.site is not None else bare_site(offer.region)


@dataclass(frozen=True)
class Settled:
    """A charged job as the buyer sees it: its receipt's id and energy figures."""

    job_id: str
    receipt_hash: str
    energy: dict[str, Any]

    def usage_extension(self) -> dict[str, Any]:
        """What is added to OpenAI's `usage`: `receipt` (job id, receipt hash) and `energy`."""
        return {
            "receipt": {"job_id": self.job_id, "receipt_hash": self.receipt_hash},
            "energy": self.energy,
        }


@dataclass
class Attempt:
    """One job on one provider, from its hold to its settlement or release."""

    runtime: Runtime
    offer: LiveOffer
    order: JobOrder
    body_digest: str
    worst: budgets.Estimate = field(default_factory=lambda: budgets.Estimate(None, None))
    """The request's worst-case wall energy and carbon on this offer (budget checks)."""
    buyer: str = ""
    key: KeyContext | None = None
    ticket: JobTicket | None = None
    ticket_digest: str | None = None
    ticket_header: str | None = None
    """The signed ticket as the agent receives it (a cancel carries it too)."""
    finished: bool = False
    _counted: bool = field(default=False, repr=False)

    async def open(self, raw_key: str, key: KeyContext | None) -> str | None:
        """Checks the key's budgets, holds, records, signs the ticket and counts the
        provider's load; the ticket header. None: the offer is routed out for the key's
        energy or carbon budget (it cannot be estimated) and nothing was opened."""
        now = time.time_ns() // 1_000_000  # the ticket's issue time, stored with the job
        self.order = replace(self.order, ticket_issued_at_ms=now)
        context, opened = await run_db(self.runtime, _open, key, raw_key, self.order, self.worst)
        self.key, self.buyer = context, context.buyer
        self.order = replace(self.order, buyer=context.buyer, api_key_id=context.key_id)
        if not opened:
            self.finished = True
            return None
        self.ticket = JobTicket(
            job_id=self.order.job_id,
            provider=self.offer.provider,
            request_digest=self.body_digest,
            model=self.order.model,
            max_tokens=self.order.max_tokens,
            issued_at=now,
            expires_at=now + TICKET_TTL_MS,
            domain=self.runtime.chain.domain,
        )
        # Signed as `protocol.messages.sign` does; its digest (the receipt's ticket_digest)
        # comes from the same signing bytes.
        raw = jobs.signing_bytes_of(self.ticket)
        signer = self.runtime.ticket_key
        envelope = Signed[JobTicket](
            message=self.ticket,
            signer=to_hex(bytes(signer.verify_key)),
            signature=to_hex(signer.sign(raw).signature),
        )
        self.ticket_digest = "0x" + hashlib.sha256(raw).hexdigest()
        self.offer.in_flight += 1
        self._counted = True
        self.ticket_header = ticket_header(envelope)
        return self.ticket_header

    async def settle(
        self,
        envelope: str | bytes,
        usage: Any,
        token_ids: list[int] | None,
        *,
        interrupted: bool = False,
    ) -> Settled:
        """Verifies the receipt against the ticket and what was relayed, charges it and
        stores it in one transaction; what the buyer is told of it. A refused receipt is
        stored with its reason, the job failed and its hold released (then re-raised).

        `interrupted`: the agent's stream broke off, so an interrupted receipt is expected,
        charged for exactly `token_ids` (the tokens relayed to the buyer) and its prompt."""
        assert self.ticket is not None
        runtime, ticket = self.runtime, self.ticket
        text = envelope if isinstance(envelope, str) else envelope.decode("utf-8", "replace")
        site = offer_site(self.offer)
        try:
            receipt, receipt_hash = jobs.check_receipt(
                envelope,
                ticket,
                self.offer.public_key,
                runtime.chain.domain,
                None if usage is None else Usage.of(usage),
                token_ids,
                interrupted=interrupted,
                max_prompt_tokens=self.order.prompt_bound,
                ticket_digest=self.ticket_digest,
            )
        except ReceiptRejectedError as exc:
            await self.reject(exc, text)
            raise
        energy = receipt.energy
        chain = energy_chain(energy_method(energy.method), energy.millijoules, site)
        work = partial(
            jobs.complete_job,
            job_id=ticket.job_id,
            receipt=receipt,
            envelope=text,
            fee_bps=runtime.settings.protocol_fee_bps,
            site=site_json(site),
            chain=chain,
            receipt_hash=receipt_hash,
            order=self.order,
        )
        with anyio.CancelScope(shield=True):
            await run_db(runtime, _in_transaction, work)
        self.finished = True
        return Settled(
            job_id=ticket.job_id,
            receipt_hash=receipt_hash,
            energy=buyer_energy(chain, energy.millijoules, energy.basis),
        )

    async def reject(self, error: ReceiptRejectedError, envelope: str | None) -> None:
        """Keeps the refused receipt with its reason; fails the job, releases the hold."""
        if self.finished:
            return
        self.finished = True
        job_id = self.order.job_id
        work = partial(jobs.reject_receipt, job_id=job_id, error=error, envelope=envelope)
        with anyio.CancelScope(shield=True):
            await run_db(self.runtime, _in_transaction, work)

    async def fail(self, reason: str) -> None:
        """Releases the whole hold and marks the job failed (shielded from cancellation)."""
        if self.finished:
            return
        self.finished = True
        work = partial(jobs.fail_job, job_id=self.order.job_id, reason=reason)
        with anyio.CancelScope(shield=True):
            await run_db(self.runtime, _in_transaction, work)

    async def close(self, reason: str = "request ended without a verified receipt") -> None:
        """Ends the attempt: releases the hold unless it was settled; drops the load count."""
        try:
            await self.fail(reason)
        finally:
            if self._counted:
                self._counted = False
                self.offer.in_flight -= 1

    def provider_block(self) -> dict[str, Any]:
        """The `provider` extension buyers see."""
        return {"address": self.offer.provider, "region": self.offer.region}
