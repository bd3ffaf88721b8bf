"""The receipt-check pass reads plain rows, not Receipt objects: what it decides and writes
is what `claim_of` / `check_one` / `outcome` give for each receipt, over several chunks and
providers with and without hardware, from the ticket's stored issue time where the job has
one; and a status set meanwhile is left as it is."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from market.energy.receipt_checks import CLOCK_SKEW_MS, check_receipt_claim
from market.jobs.models import Job, Receipt
from market.ledger.service import credit_deposit
from market.providers.models import Provider
from market.providers.service import reputation_penalty
from market.reviews import receipts
from market.reviews.models import PaymentReviewReason, ReceiptCheckFailure
from market.reviews.receipts import (
    Hardware,
    check_one,
    check_receipts,
    claim_of,
    hardware_of,
    outcome,
)
from market.reviews.service import DEFAULT_HOLD_KINDS, holding_failures
from tests.market.reviews.conftest import claimed_receipt, serve_on_h100

BUYER = "0x70997970c51812dc3a04C302eC0F2A8f70F2B0A1"
SERVED = "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC"
"""Serves on one H100 (its offer), so every check runs."""
UNKNOWN = "0x90F79bf6EB2c4f870365E785982E1f101E93b906"
"""No provider row: GPU unknown, so only the timing checks run."""


def _mix(session: Session) -> list[str]:
    """Receipts of both providers that pass, fail (each physics and consistency check) and
    are flagged (decode speed), plus unmeasured ones and one without a first token."""
    credit_deposit(session, BUYER, 10_000_000, "0x" + "ab" * 32, 0)
    serve_on_h100(session, SERVED)
    jobs: list[str] = []

    def add(
        job_id: str,
        provider: str,
        tokens: int = 200,
        joules_per_token: float = 0.1,
        decode_ms: int = 4_000,
    ) -> Receipt:
        receipt = claimed_receipt(
            session,
            job_id,
            BUYER,
            provider,
            1_000,
            50,
            tokens=tokens,
            joules_per_token=joules_per_token,
            decode_ms=decode_ms,
        )
        jobs.append(job_id)
        return receipt

    for provider, tag in ((SERVED, "s"), (UNKNOWN, "u")):
        add(f"{tag}-ok", provider)
        add(f"{tag}-cold", provider, joules_per_token=0.001)
        add(f"{tag}-hot", provider, joules_per_token=100.0)
        add(f"{tag}-fast", provider, tokens=2_000, decode_ms=2_000)
        add(f"{tag}-fast-cold", provider, tokens=2_000, decode_ms=2_000, joules_per_token=0.001)
        late = add(f"{tag}-order", provider)
        late.first_token_at_ms = late.finished_at_ms + 10  # first token after the finish
        unmeasured = add(f"{tag}-unmeasured", provider)
        unmeasured.energy_method, unmeasured.energy_mj = "unmeasured", None
        no_first = add(f"{tag}-no-first", provider)
        no_first.first_token_at_ms = None
        add(f"{tag}-ok-2", provider, tokens=500, decode_ms=5_000)
        # Jobs that kept their ticket's issue time (since migration 0013): checked from it.
        for name, before_first_ms in (("issued", 300), ("issued-late", -(CLOCK_SKEW_MS + 1))):
            receipt = add(f"{tag}-{name}", provider)
            job = session.get(Job, receipt.job_id)
            assert job is not None
            assert receipt.first_token_at_ms is not None
            job.ticket_issued_at_ms = receipt.first_token_at_ms - before_first_ms
    session.flush()
    return jobs


def _expected(
    session: Session, jobs: Sequence[str], hold_kinds: frozenset[str]
) -> tuple[
    dict[str, str], list[tuple[str, str, str, str]], dict[str, int], list[tuple[str, str, str]]
]:
    """Statuses, failures, reputation and review reasons from the per-receipt functions."""
    hardware: dict[str, Hardware] = hardware_of(session, [SERVED, UNKNOWN])
    statuses: dict[str, str] = {}
    failures: list[tuple[str, str, str, str]] = []
    penalties = {SERVED: 0, UNKNOWN: 0}
    reasons: list[tuple[str, str, str]] = []
    for job_id in sorted(jobs):
        receipt = session.get(Receipt, job_id)
        job = session.get(Job, job_id)
        assert receipt is not None
        assert job is not None
        found = hardware.get(receipt.provider_address)
        if job.ticket_issued_at_ms is not None:
            results = check_receipt_claim(claim_of(receipt, found, job.ticket_issued_at_ms))
        else:
            results = check_one(claim_of(receipt, found), int(job.created_at.timestamp() * 1000))
        statuses[job_id] = outcome(results, hold_kinds).value
        failures += [(job_id, r.check, r.kind, r.reason) for r in results if r.ok is False]
        penalties[receipt.provider_address] -= reputation_penalty(results)
        reasons += [(job_id, r.check, r.kind) for r in holding_failures(results, hold_kinds)]
    return statuses, failures, penalties, reasons


def _statuses(session: Session) -> dict[str, str | None]:
    rows = session.execute(select(Receipt.job_id, Receipt.check_status))
    return {job_id: status for job_id, status in rows}


@pytest.mark.parametrize("chunk", [1, 4, 1_000])
def test_the_pass_decides_and_writes_what_the_per_receipt_functions_give(
    session: Session, chunk: int
) -> None:
    jobs = _mix(session)
    statuses, failures, penalties, reasons = _expected(session, jobs, DEFAULT_HOLD_KINDS)
    assert set(statuses.values()) == {"pass", "flag", "fail"}  # the mix covers each
    # A first token before the stored ticket issue time fails `timing_order`; the same
    # receipt checked from the job's creation (as before 0013) could not.
    late = [f for f in failures if f[0] == "s-issued-late"]
    assert [f[1] for f in late] == ["timing_order"]
    assert statuses["s-issued"] == "pass"

    round_ = check_receipts(session, DEFAULT_HOLD_KINDS, chunk=chunk)

    values = list(statuses.values())
    assert (round_.checked, round_.failed, round_.flagged) == (
        len(jobs),
        values.count("fail"),
        values.count("flag"),
    )
    stored = _statuses(session)
    assert stored == statuses
    rows = session.scalars(select(ReceiptCheckFailure).order_by(ReceiptCheckFailure.id)).all()
    assert [(f.job_id, f.check, f.kind, f.reason) for f in rows] == failures  # job-id order
    provider = session.get(Provider, SERVED, populate_existing=True)
    assert provider is not None
    assert provider.reputation == penalties[SERVED]
    held = session.scalars(select(PaymentReviewReason).order_by(PaymentReviewReason.id)).all()
    assert sorted((r.job_id or "", r.check, r.kind) for r in held) == sorted(reasons)
    assert {r.source for r in held} == {"receipt"}


def test_a_status_set_meanwhile_is_left_as_it_is(
    session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    jobs = _mix(session)
    original = receipts.hardware_of

    def voiding_first(session: Session, addresses: Sequence[str]) -> dict[str, Hardware]:
        # Between reading the chunk and writing its statuses, a void takes two receipts.
        session.execute(
            update(Receipt)
            .where(Receipt.job_id.in_(["s-ok", "s-cold"]))
            .values(check_status="void")
        )
        return original(session, addresses)

    monkeypatch.setattr(receipts, "hardware_of", voiding_first)
    check_receipts(session, DEFAULT_HOLD_KINDS)
    stored = _statuses(session)
    assert (stored["s-ok"], stored["s-cold"]) == ("void", "void")
    assert stored["s-fast"] == "flag"
    assert stored["u-ok"] == "pass"
    assert None not in {stored[job_id] for job_id in jobs}
