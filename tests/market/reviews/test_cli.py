"""`market review ...` against the configured database (MARKET_DATABASE_URL)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner

from market import cli
from market.db import session_scope
from market.ledger.service import balance, buyer_available, credit_deposit
from market.reviews.models import PaymentReview, ReviewStatus
from market.reviews.service import HoldReason, hold_payment
from tests.market.reviews.conftest import claimed_receipt

BUYER = "0x70997970c51812dc3a04C302eC0F2A8f70F2B0A1"
PROVIDERS = (
    "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC",
    "0x90F79bf6EB2c4f870365E785982E1f101E93b906",
)


def _review(sessions: sessionmaker[Session], provider: str, job_id: str) -> int:
    with session_scope(sessions) as session:
        claimed_receipt(session, job_id, BUYER, provider, 1_000, 40)
        review = hold_payment(
            session,
            provider,
            [
                HoldReason(
                    "receipt_jpt_floor", "physics", "0.001 J/token below the floor", job_id=job_id
                )
            ],
        )
        assert review is not None
        return review.id


def test_list_show_release_and_void(
    cli_database: None, session_factory: sessionmaker[Session]
) -> None:
    runner = CliRunner()
    with session_scope(session_factory) as session:
        credit_deposit(session, BUYER, 100_000, "0x" + "cd" * 32, 0)
    first = _review(session_factory, PROVIDERS[0], "job-cli-1")
    second = _review(session_factory, PROVIDERS[1], "job-cli-2")

    listed = runner.invoke(cli.app, ["review", "list", "--status", "open"])
    assert listed.exit_code == 0, listed.output
    assert PROVIDERS[0] in listed.output
    assert PROVIDERS[1] in listed.output

    shown = runner.invoke(cli.app, ["review", "show", str(first)])
    assert shown.exit_code == 0, shown.output
    assert "withheld: 1 receipts, charges 1000 base units" in shown.output
    assert "receipt_jpt_floor" in shown.output
    assert "job-cli-1" in shown.output

    released = runner.invoke(
        cli.app, ["review", "release", str(first), "--note", "meter glitch", "--by", "alice"]
    )
    assert released.exit_code == 0, released.output
    again = runner.invoke(cli.app, ["review", "release", str(first), "--note", "twice"])
    assert again.exit_code == 1
    assert "review_closed" in again.output

    voided = runner.invoke(cli.app, ["review", "void", str(second), "--note", "impossible"])
    assert voided.exit_code == 0, voided.output
    assert "1 receipts" in voided.output
    assert "1000 base units back to buyers" in voided.output

    with session_scope(session_factory) as session:
        rows = {r.id: r for r in session.scalars(select(PaymentReview))}
        assert rows[first].status is ReviewStatus.RELEASED
        assert (rows[first].decided_by, rows[first].note) == ("alice", "meter glitch")
        assert rows[second].status is ReviewStatus.VOIDED
        assert rows[second].reversed_amount == 1_000
        # 100,000 deposited; two jobs charged 1,000 each; the voided one's charge came back.
        assert balance(session, buyer_available(BUYER)) == 100_000 - 1_000

    shown = runner.invoke(cli.app, ["review", "show", str(second)])
    assert "voided" in shown.output
    assert "impossible" in shown.output
    released_only = runner.invoke(cli.app, ["review", "list", "--status", "released"])
    assert PROVIDERS[0] in released_only.output
    assert PROVIDERS[1] not in released_only.output
    assert runner.invoke(cli.app, ["review", "show", "999"]).exit_code == 1
    assert runner.invoke(cli.app, ["review", "list", "--status", "shut"]).exit_code == 2
