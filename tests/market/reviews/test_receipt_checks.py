"""The receipt-check pass on SQLite and PostgreSQL: statuses, stored failures, reputation,
and the reviews that failures of a holding kind open."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from market.jobs.models import Receipt
from market.ledger.service import credit_deposit
from market.providers.models import Provider
from market.providers.service import DATA_PENALTY, PHYSICS_PENALTY
from market.reviews.models import (
    PaymentReview,
    PaymentReviewReason,
    ReceiptCheckFailure,
    ReviewStatus,
)
from market.reviews.receipts import check_receipts, hardware_of
from market.reviews.service import DEFAULT_HOLD_KINDS
from tests.market.reviews.conftest import GPU, claimed_receipt, serve_on_h100

BUYER = "0x70997970c51812dc3a04C302eC0F2A8f70F2B0A1"
PROVIDER = "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC"


def _funded(session: Session) -> None:
    credit_deposit(session, BUYER, 10_000_000, "0x" + "ab" * 32, 0)
    serve_on_h100(session, PROVIDER)


def _status(session: Session, job_id: str) -> str | None:
    return session.scalar(select(Receipt.check_status).where(Receipt.job_id == job_id))


def _reputation(session: Session) -> int:
    provider = session.get(Provider, PROVIDER, populate_existing=True)
    assert provider is not None
    return provider.reputation


def test_default_hold_kinds() -> None:
    assert {"physics", "consistency", "hygiene"} == DEFAULT_HOLD_KINDS


def test_honest_receipts_pass_and_store_nothing(session: Session) -> None:
    _funded(session)
    for i in range(3):
        claimed_receipt(session, f"job-ok-{i}", BUYER, PROVIDER, 1_000, 50)
    round_ = check_receipts(session, DEFAULT_HOLD_KINDS, chunk=2)  # two chunks
    assert (round_.checked, round_.failed, round_.flagged) == (3, 0, 0)
    assert {_status(session, f"job-ok-{i}") for i in range(3)} == {"pass"}
    assert session.scalars(select(ReceiptCheckFailure)).all() == []
    assert session.scalars(select(PaymentReview)).all() == []
    assert _reputation(session) == 0
    assert check_receipts(session, DEFAULT_HOLD_KINDS).checked == 0  # each is checked once


def test_jpt_below_the_physics_floor_opens_a_review(session: Session) -> None:
    _funded(session)
    claimed_receipt(session, "job-ok", BUYER, PROVIDER, 1_000, 50)
    # 0.001 J/token: an eleventh of what 8 B parameters take on an H100 at the least.
    claimed_receipt(session, "job-cold", BUYER, PROVIDER, 1_000, 50, joules_per_token=0.001)
    round_ = check_receipts(session, DEFAULT_HOLD_KINDS)
    assert (round_.checked, round_.failed, round_.flagged) == (2, 1, 0)
    assert _status(session, "job-ok") == "pass"
    assert _status(session, "job-cold") == "fail"
    [failure] = session.scalars(select(ReceiptCheckFailure)).all()
    assert (failure.job_id, failure.check, failure.kind) == (
        "job-cold",
        "receipt_jpt_floor",
        "physics",
    )
    assert "below the physics floor" in failure.reason
    [review] = session.scalars(select(PaymentReview)).all()
    assert (review.provider_address, review.status) == (PROVIDER, ReviewStatus.OPEN)
    [reason] = session.scalars(select(PaymentReviewReason)).all()
    assert (reason.source, reason.job_id, reason.attestation_seq) == ("receipt", "job-cold", None)
    assert reason.check == "receipt_jpt_floor"
    assert _reputation(session) == -PHYSICS_PENALTY

    # Another failure extends the same open review.
    claimed_receipt(session, "job-cold-2", BUYER, PROVIDER, 1_000, 50, joules_per_token=0.002)
    check_receipts(session, DEFAULT_HOLD_KINDS)
    assert len(session.scalars(select(PaymentReview)).all()) == 1
    assert len(session.scalars(select(PaymentReviewReason)).all()) == 2
    assert _reputation(session) == -2 * PHYSICS_PENALTY


def test_impossible_decode_speed_is_flagged_and_holds_only_if_data_holds(
    session: Session,
) -> None:
    _funded(session)
    # 2,000 tokens decoded in 2 s: 1,000 tokens/s for one sequence, above 4 x 138.
    claimed_receipt(session, "job-fast", BUYER, PROVIDER, 1_000, 50, tokens=2_000, decode_ms=2_000)
    round_ = check_receipts(session, DEFAULT_HOLD_KINDS)
    assert (round_.failed, round_.flagged) == (0, 1)
    assert _status(session, "job-fast") == "flag"
    [failure] = session.scalars(select(ReceiptCheckFailure)).all()
    assert (failure.check, failure.kind) == ("decode_speed", "data")
    assert session.scalars(select(PaymentReview)).all() == []  # data only lowers reputation
    assert _reputation(session) == -DATA_PENALTY

    claimed_receipt(
        session, "job-fast-2", BUYER, PROVIDER, 1_000, 50, tokens=2_000, decode_ms=2_000
    )
    round_ = check_receipts(session, DEFAULT_HOLD_KINDS | {"data"})
    assert (round_.failed, round_.flagged) == (1, 0)
    assert _status(session, "job-fast-2") == "fail"
    [review] = session.scalars(select(PaymentReview)).all()
    assert review.status is ReviewStatus.OPEN


def test_energy_above_the_power_limit_since_the_job_began_fails(session: Session) -> None:
    _funded(session)
    # 200 tokens at 100 J each: 20 kJ within about 5 s of the job's creation is ~4 kW.
    claimed_receipt(session, "job-hot", BUYER, PROVIDER, 1_000, 50, joules_per_token=100.0)
    check_receipts(session, DEFAULT_HOLD_KINDS)
    assert _status(session, "job-hot") == "fail"
    checks = {f.check for f in session.scalars(select(ReceiptCheckFailure))}
    assert checks == {"receipt_power"}


def test_unknown_hardware_skips_rather_than_fails(session: Session) -> None:
    credit_deposit(session, BUYER, 10_000_000, "0x" + "ab" * 32, 0)
    # No provider row: GPU unknown, so the floor and decode checks are skipped.
    claimed_receipt(session, "job-x", BUYER, PROVIDER, 1_000, 50, joules_per_token=0.001)
    assert hardware_of(session, [PROVIDER]) == {}
    check_receipts(session, DEFAULT_HOLD_KINDS)
    assert _status(session, "job-x") == "pass"


def test_hardware_comes_from_the_offer(session: Session) -> None:
    serve_on_h100(session, PROVIDER)
    found = hardware_of(session, [PROVIDER])[PROVIDER]
    assert (found.gpu_name, found.num_gpus, found.power_limit_w) == (GPU, 1, None)
