"""Fixtures for payment reviews: the settlement deployment (embedded chain) and the
providers' app, reused from their suites, and receipts whose claims the checks can judge."""

from __future__ import annotations

import time

from sqlalchemy.orm import Session

from market.db import utcnow
from market.jobs.models import Receipt
from market.providers.models import Offer, Provider, ProviderStatus
from tests.market.providers.conftest import chain_runtime, client, providers, runtime
from tests.market.settlement.conftest import add_receipt, chain_url, market

__all__ = ["chain_runtime", "chain_url", "client", "market", "providers", "runtime"]

GPU = "NVIDIA H100 80GB HBM3"
MODEL = "meta-llama/Llama-3.1-8B-Instruct"
"""8 B active parameters: J/token floor on an H100 about 0.0113; one sequence's decode
ceiling 4 x 138 tokens/s (gpt-oss-120b, the fastest measured in its size class)."""


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def serve_on_h100(session: Session, address: str) -> None:
    """A provider row with an offer on one H100 (where receipt checks read the GPU)."""
    session.add(
        Provider(
            address=address,
            public_key="0x" + "11" * 32,
            status=ProviderStatus.ACTIVE,
            reputation=0,
            registered_at=utcnow(),
            registration_issued_at_ms=now_ms(),
        )
    )
    session.flush()
    session.add(
        Offer(
            provider_address=address,
            model=MODEL,
            price_in_per_mtok=1,
            price_out_per_mtok=1,
            max_concurrency=8,
            pue_profile="industry_average",
            pue_milli=1560,
            host_overhead_milli=1400,
            gpu=GPU,
            gpu_count=1,
            job_url="http://agent.example:8001/jobs",
            updated_at=utcnow(),
        )
    )
    session.flush()


def claimed_receipt(
    session: Session,
    job_id: str,
    buyer: str,
    provider: str,
    charge: int,
    fee: int,
    *,
    tokens: int = 200,
    joules_per_token: float = 0.1,
    decode_ms: int = 4_000,
) -> Receipt:
    """A verified, charged receipt of `MODEL` with measured energy and timings: by default
    200 tokens at 0.1 J/token decoded in 4 s (50 tokens/s), finished just now."""
    add_receipt(session, job_id, buyer, provider, charge, fee)
    receipt = session.get(Receipt, job_id)
    assert receipt is not None
    finished = now_ms()
    receipt.model = MODEL
    receipt.completion_tokens = tokens
    receipt.energy_method = "measured"
    receipt.energy_mj = round(tokens * joules_per_token * 1000)
    receipt.first_token_at_ms = finished - decode_ms
    receipt.finished_at_ms = finished
    session.flush()
    return receipt
