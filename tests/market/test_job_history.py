"""A buyer's job history (`market.jobs.service.buyer_history`, `GET /jobs`) on both dialects:
newest first, paged by job id, only the buyer's own jobs, each with its receipt's figures."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import text, update
from sqlalchemy.orm import Session

from market.energy.accounting import SiteProfile
from market.jobs.errors import JobNotFoundError
from market.jobs.models import Job, JobStatus
from market.jobs.service import buyer_history, complete_job, fail_job, open_job
from market.providers.site import site_json
from protocol.keys import signing_key_from_seed
from protocol.messages import Domain, EnergyAttribution, Receipt, sign
from tests.market.factories import funded_buyer, job_order

KEY = signing_key_from_seed("0x" + "42" * 32)
DOMAIN = Domain(chain_id=31337, settlement_contract="0x5FbDB2315678afecb367f032d93F642f64180aa3")
PROVIDER = "0x7E5F4552091A69125d5DfCb7b8C2659029395Bdf"
MODEL = "meta-llama/Llama-3.1-8B-Instruct"
SITE = SiteProfile(
    region="eu-west",
    tariff_micro_per_kwh=250_000,
    tariff_currency="EUR",
    pue_profile=None,
    pue_milli=1_150,
    host_overhead_milli=1_200,
)
T0 = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def _open(session: Session, buyer: str, created_at: datetime, job_id: str | None = None) -> str:
    job_id = job_id or secrets.token_hex(16)
    order = job_order(job_id, buyer, PROVIDER, MODEL, price_in=10**6, price_out=2 * 10**6)
    open_job(session, order)
    session.execute(update(Job).where(Job.id == job_id).values(created_at=created_at))
    return job_id


def _complete(
    session: Session, job_id: str, energy: EnergyAttribution, interrupted: bool = False
) -> None:
    receipt = Receipt(
        job_id=job_id,
        provider=PROVIDER,
        model=MODEL,
        model_digest="0x" + "11" * 32,
        prompt_tokens=30,
        completion_tokens=64,
        output_digest="0x" + "22" * 32,
        first_token_at=1_767_225_600_000,
        finished_at=1_767_225_600_900,
        energy=energy,
        attestation_seq=7,
        ticket_digest="0x" + "33" * 32,
        status="interrupted" if interrupted else "complete",
        interrupted_reason="client_disconnected" if interrupted else None,
        domain=DOMAIN,
    )
    envelope = sign(receipt, KEY)
    complete_job(session, job_id, receipt, envelope.model_dump_json(), 500, site_json(SITE))


@pytest.fixture
def history(session: Session) -> tuple[str, list[str]]:
    """A buyer's six jobs, newest first: routed, failed, two with the same creation time
    (interrupted and unmeasured), measured; plus another buyer's job in between."""
    buyer, other = funded_buyer(session, 10**9), funded_buyer(session, 10**9)
    measured = _open(session, buyer, T0)
    _complete(session, measured, EnergyAttribution(method="measured", millijoules=180_000))
    tie_a = _open(session, buyer, T0 + timedelta(seconds=1), "a" * 32)
    tie_b = _open(session, buyer, T0 + timedelta(seconds=1), "b" * 32)
    _complete(session, tie_a, EnergyAttribution(method="unmeasured"))
    _complete(
        session,
        tie_b,
        EnergyAttribution(method="estimated", millijoules=90_000, basis="tdp"),
        interrupted=True,
    )
    _open(session, other, T0 + timedelta(seconds=2))
    failed = _open(session, buyer, T0 + timedelta(seconds=3))
    fail_job(session, failed, "engine_failed: boom")
    routed = _open(session, buyer, T0 + timedelta(seconds=4))
    session.commit()
    return buyer, [routed, failed, tie_b, tie_a, measured]


def test_history_is_newest_first_with_each_receipts_figures(
    session: Session, history: tuple[str, list[str]]
) -> None:
    buyer, ids = history
    rows = buyer_history(session, buyer)
    assert [row.id for row in rows] == ids
    routed, failed, interrupted, unmeasured, measured = rows

    assert routed.status is JobStatus.ROUTED
    assert (routed.prompt_tokens, routed.charge, routed.energy, routed.receipt_status) == (
        None,
        0,
        None,
        None,
    )
    assert failed.status is JobStatus.FAILED
    assert failed.error == "engine_failed: boom"
    assert (failed.charge, failed.energy) == (0, None)

    # 30 prompt tokens at 1 per million base units... charged as the receipt was: 158 = ceil(
    # (30 * 1e6 + 64 * 2e6) / 1e6).
    for charged in (interrupted, unmeasured, measured):
        assert charged.status is JobStatus.COMPLETED
        assert (charged.prompt_tokens, charged.completion_tokens, charged.charge) == (30, 64, 158)
        assert charged.epoch is None
    assert interrupted.receipt_status == "interrupted"
    assert measured.receipt_status == unmeasured.receipt_status == "complete"

    # Energy as the completion's response gives it: measured joules through the site's chain.
    assert measured.energy is not None
    assert (measured.energy["method"], measured.energy["joules"]) == ("measured", 180.0)
    wall_j = Decimal(180) * Decimal("1.2") * Decimal("1.15")
    assert Decimal(measured.energy["wall_kwh"]) == wall_j / 3_600_000
    assert measured.energy["region"] == "eu-west"
    assert measured.energy["energy_cost"]["currency"] == "EUR"
    assert interrupted.energy is not None
    assert (interrupted.energy["joules"], interrupted.energy["basis"]) == (90.0, "tdp")
    # Unmeasured: every figure null, never 0.
    assert unmeasured.energy is not None
    assert unmeasured.energy["method"] == "unmeasured"
    for figure in ("joules", "gpu_joules", "wall_kwh", "energy_cost", "gco2"):
        assert unmeasured.energy[figure] is None


def test_pages_follow_on_from_the_last_id_across_ties(
    session: Session, history: tuple[str, list[str]]
) -> None:
    buyer, ids = history
    seen: list[str] = []
    before = None
    while True:
        page = buyer_history(session, buyer, limit=2, before=before)
        if not page:
            break
        assert len(page) <= 2
        seen += [row.id for row in page]
        before = page[-1].id
    assert seen == ids


def test_another_buyers_job_is_not_a_cursor(
    session: Session, history: tuple[str, list[str]]
) -> None:
    buyer, ids = history
    other = funded_buyer(session, 10**9)
    with pytest.raises(JobNotFoundError):
        buyer_history(session, other, before=ids[0])
    with pytest.raises(JobNotFoundError):
        buyer_history(session, buyer, before="c" * 32)
    with pytest.raises(JobNotFoundError):  # PostgreSQL cannot even compare text with a NUL
        buyer_history(session, buyer, before="a\x00b")
    assert buyer_history(session, other) == []


def test_a_page_is_one_index_range(session: Session, history: tuple[str, list[str]]) -> None:
    """No sort of the buyer's whole history: the plan reads `ix_jobs_buyer_created` in order."""
    if session.get_bind().dialect.name != "sqlite":
        pytest.skip("the plan is checked on SQLite; PostgreSQL's depends on its statistics")
    buyer, ids = history
    plan = session.execute(
        text(
            "EXPLAIN QUERY PLAN SELECT id FROM jobs WHERE buyer_address = :b "
            "AND (created_at < :t OR (created_at = :t AND id < :i)) "
            "ORDER BY created_at DESC, id DESC LIMIT 2"
        ),
        {"b": buyer, "t": T0, "i": ids[0]},
    ).all()
    details = " ".join(str(row[-1]) for row in plan)
    assert "ix_jobs_buyer_created" in details
    assert "TEMP B-TREE" not in details
