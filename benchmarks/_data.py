"""Receipts in a market database for the epoch and storage benchmarks.

`fill_real` goes through the request path's own functions (`open_job`, `check_receipt`,
`complete_job`: job row, hold, charge and release transfers, receipt row with its signed
envelope's columns), one transaction each as the request path does. `fill_bulk` writes the same
job and receipt rows with bulk inserts (signed columns from one signed template) and books
the charges in the ledger once per buyer/provider pair, so that 100k receipts can be set up in
seconds; settlement reads only these rows and balances.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass

from nacl.signing import SigningKey
from sqlalchemy import insert
from sqlalchemy.orm import Session, sessionmaker

from market.db import session_scope, utcnow
from market.jobs.models import Job, JobStatus, Receipt
from market.jobs.receipt_codec import domain_id, pack
from market.jobs.service import JobOrder, Usage, check_receipt, complete_job, cost, open_job
from market.ledger import service as ledger
from market.ledger.models import TransferKind
from protocol.keys import public_key_hex, signing_key_from_seed
from protocol.messages import (
    Domain,
    EnergyAttribution,
    JobTicket,
    message_digest,
    new_job_id,
    output_digest,
    parse_signed,
    sign,
)
from protocol.messages import Receipt as SignedReceipt

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
PRICE_IN, PRICE_OUT = 50_000, 200_000
"""Base units (tUSD, 6 decimals) per million tokens."""
FEE_BPS = 500
TOKENS_OUT = 64
MARKET_KEY = signing_key_from_seed("0x" + "01" * 32)


@dataclass(frozen=True)
class Party:
    """A provider: its address and receipt-signing key."""

    address: str
    key: SigningKey


def signed(ticket: JobTicket, key: SigningKey, prompt: int, energy_mj: int | None) -> str:
    """The provider's signed receipt for `ticket`, as the JSON envelope it sends."""
    now = ticket.issued_at
    energy = (
        EnergyAttribution(method="measured", millijoules=energy_mj)
        if energy_mj is not None
        else EnergyAttribution(method="unmeasured")
    )
    receipt = SignedReceipt(
        job_id=ticket.job_id,
        provider=ticket.provider,
        model=ticket.model,
        model_digest="0x" + "ab" * 32,
        prompt_tokens=prompt,
        completion_tokens=TOKENS_OUT,
        output_digest=output_digest([1000 + i for i in range(TOKENS_OUT)]),
        first_token_at=now + 40,
        finished_at=now + 900,
        energy=energy,
        attestation_seq=7,
        ticket_digest=message_digest(ticket),
        status="complete",
        interrupted_reason=None,
        domain=ticket.domain,
    )
    return sign(receipt, key).model_dump_json()


def ticket_for(job_id: str, provider: str, domain: Domain) -> JobTicket:
    """A job ticket as the market issues it."""
    now = int(time.time() * 1000)
    return JobTicket(
        job_id=job_id,
        provider=provider,
        request_digest="0x" + secrets.token_hex(32),
        model=MODEL,
        max_tokens=TOKENS_OUT,
        issued_at=now,
        expires_at=now + 60_000,
        domain=domain,
    )


def fill_real(
    sessions: sessionmaker[Session],
    count: int,
    buyers: list[str],
    providers: list[Party],
    domain: Domain,
    site: str | None = None,
) -> None:
    """`count` requests through open_job / check_receipt / complete_job (buyers funded);
    `site`: the routed offer's site JSON each receipt is stored with (as routing passes it)."""
    for i in range(count):
        buyer, provider = buyers[i % len(buyers)], providers[(i // len(buyers)) % len(providers)]
        job_id = new_job_id()
        prompt = 20 + (i * 37) % 400
        order = JobOrder(
            job_id=job_id,
            buyer=buyer,
            provider=provider.address,
            model=MODEL,
            stream=i % 2 == 0,
            price_in=PRICE_IN,
            price_out=PRICE_OUT,
            hold=cost(prompt + 16, TOKENS_OUT, PRICE_IN, PRICE_OUT),
            max_tokens=TOKENS_OUT,
        )
        with session_scope(sessions) as session:
            open_job(session, order)
        ticket = ticket_for(job_id, provider.address, domain)
        envelope = signed(ticket, provider.key, prompt, 180_000 + i % 5_000)
        usage = Usage(prompt, TOKENS_OUT)
        receipt, _ = check_receipt(envelope, ticket, public_key_hex(provider.key), domain, usage)
        with session_scope(sessions) as session:
            complete_job(session, job_id, receipt, envelope, FEE_BPS, site)


def fill_bulk(
    sessions: sessionmaker[Session],
    count: int,
    buyers: list[str],
    providers: list[str],
    domain: Domain,
    chunk: int = 5_000,
) -> None:
    """`count` job + receipt rows by bulk insert; charges booked per buyer/provider pair."""
    key = signing_key_from_seed("0x" + "02" * 32)
    template_id = "f" * 32
    template = signed(ticket_for(template_id, providers[0], domain), key, 100, 200_000)
    columns = pack(parse_signed(template, SignedReceipt))
    with session_scope(sessions) as session:
        columns["domain_id"] = domain_id(session, domain)
    totals: dict[tuple[str, str], tuple[int, int]] = {}
    now = utcnow()
    for start in range(0, count, chunk):
        jobs, receipts = [], []
        for i in range(start, min(count, start + chunk)):
            buyer, provider = buyers[i % len(buyers)], providers[(i // 7) % len(providers)]
            job_id = secrets.token_hex(16)
            prompt = 20 + (i * 37) % 400
            charge = cost(prompt, TOKENS_OUT, PRICE_IN, PRICE_OUT)
            fee = charge * FEE_BPS // 10_000
            charged, fees = totals.get((buyer, provider), (0, 0))
            totals[buyer, provider] = (charged + charge, fees + fee)
            jobs.append(
                {
                    "id": job_id,
                    "buyer_address": buyer,
                    "provider_address": provider,
                    "model": MODEL,
                    "stream": i % 2 == 0,
                    "status": JobStatus.COMPLETED,
                    "hold_amount": charge + 100,
                    "price_in_per_mtok": PRICE_IN,
                    "price_out_per_mtok": PRICE_OUT,
                    "created_at": now,
                    "finished_at": now,
                }
            )
            receipts.append(
                {
                    **columns,
                    "job_id": job_id,
                    "provider_address": provider,
                    "buyer_address": buyer,
                    "model": MODEL,
                    "receipt_hash": "0x" + secrets.token_hex(32),
                    "prompt_tokens": prompt,
                    "completion_tokens": TOKENS_OUT,
                    "charge": charge,
                    "fee": fee,
                    "energy_method": "measured",
                    "energy_mj": 200_000 + i % 5_000,
                    "first_token_at_ms": 1_767_225_600_000 + i,
                    "finished_at_ms": 1_767_225_601_000 + i,
                    "verified_at": now,
                }
            )
        with session_scope(sessions) as session:
            session.execute(insert(Job), jobs)
            session.execute(insert(Receipt), receipts)
    batch = secrets.token_hex(8)  # a second fill's charges are new transfers, not replays
    with session_scope(sessions) as session:
        for n, ((buyer, provider), (charge, fee)) in enumerate(sorted(totals.items())):
            legs = [ledger.Leg(ledger.buyer_available(buyer), -charge)]
            legs.append(ledger.Leg(ledger.provider_earned(provider), charge - fee))
            if fee:
                legs.append(ledger.Leg(ledger.PROTOCOL_FEES, fee))
            ledger.post_transfer(
                session,
                kind=TransferKind.CHARGE,
                idempotency_key=f"bench:{batch}:{n}",
                legs=legs,
            )
