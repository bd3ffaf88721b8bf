"""Epoch close with a provider's payment held, then released or voided, on the embedded
chain, on SQLite and PostgreSQL: the ledger equals the contract to the base unit throughout."""

from __future__ import annotations

import secrets

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from market.config import Settings
from market.db import session_scope
from market.jobs.models import Receipt
from market.ledger import service as ledger
from market.ledger.models import Transfer
from market.reviews import service as reviews
from market.reviews.errors import ReviewClosedError
from market.reviews.models import PaymentReview, ReviewStatus
from market.settlement import service
from market.settlement.models import Epoch
from market.settlement.tasks import check_receipts, close_epoch
from market.worker import CHECK_RECEIPTS, create_celery
from protocol.chain.connection import EMBEDDED
from tests.market.reviews.conftest import claimed_receipt, serve_on_h100
from tests.market.settlement.conftest import Market

pytestmark = pytest.mark.parametrize("chain_url", [EMBEDDED], indirect=True)


class Scene:
    """Two buyers; an honest provider and one whose receipt claims an impossible J/token."""

    def __init__(self, market: Market) -> None:
        self.market = market
        self.buyers = [market.buyer(1_000_000).address for _ in range(2)]
        self.honest, self.held = market.provider(), market.provider()
        self.jobs: dict[str, list[tuple[str, str, int, int]]] = {self.honest: [], self.held: []}
        with session_scope(market.sessions) as session:
            for provider in (self.honest, self.held):
                serve_on_h100(session, provider)
        for i in range(4):
            self.receipt(self.buyers[i % 2], self.honest, 1_000 + 37 * i, 50 + i)
            self.receipt(self.buyers[i % 2], self.held, 2_000 + 11 * i, 90 + i, cold=i == 0)

    def receipt(self, buyer: str, provider: str, charge: int, fee: int, cold: bool = False) -> str:
        job_id = "job-" + secrets.token_hex(8)
        with session_scope(self.market.sessions) as session:
            jpt = 0.001 if cold else 0.1
            claimed_receipt(session, job_id, buyer, provider, charge, fee, joules_per_token=jpt)
        self.jobs[provider].append((job_id, buyer, charge, fee))
        return job_id

    def review_id(self) -> int:
        with session_scope(self.market.sessions) as session:
            return session.scalars(select(PaymentReview.id)).one()


def _epochs(session: Session, jobs: list[tuple[str, str, int, int]]) -> set[int | None]:
    ids = [job for job, *_ in jobs]
    return set(session.scalars(select(Receipt.epoch).where(Receipt.job_id.in_(ids))))


def _unsettled(session: Session, buyer: str) -> int:
    """Charges of the buyer's receipts that the contract has not seen (in no epoch, not void)."""
    return sum(
        session.scalars(
            select(Receipt.charge).where(
                Receipt.buyer_address == buyer,
                Receipt.epoch.is_(None),
                Receipt.check_status.is_distinct_from("void"),
            )
        )
    )


def _assert_books_match_chain(scene: Scene) -> None:
    """The contract's escrow of each buyer is the ledger's buyer balances plus the charges
    it has not settled yet; earnings and fees are the ledger's settled figures."""
    client = scene.market.client
    with session_scope(scene.market.sessions) as session:
        ledger.check_ledger(session)
        for buyer in scene.buyers:
            mine = sum(
                ledger.balance(session, f"buyer:{buyer}:{bucket}")
                for bucket in ("available", "held", "withdrawing")
            )
            assert client.escrow(buyer) == mine + _unsettled(session, buyer)
        for provider in (scene.honest, scene.held):
            settled = ledger.balance(session, service.provider_settled(provider))
            assert client.earnings(provider) == settled
        assert client.totals().accrued_fees == ledger.balance(
            session, service.PROTOCOL_SETTLED_FEES
        )


def _held_up(scene: Scene) -> None:
    """Epoch 1 settles the honest provider's receipts only; the held ones wait."""
    assert close_epoch(scene.market.ctx()) == 1
    with session_scope(scene.market.sessions) as session:
        assert _epochs(session, scene.jobs[scene.honest]) == {1}
        assert _epochs(session, scene.jobs[scene.held]) == {None}
        review = session.scalars(select(PaymentReview)).one()
        assert (review.provider_address, review.status) == (scene.held, ReviewStatus.OPEN)
        assert reviews.withheld(session, scene.held) == (
            4,
            sum(c for *_, c, _ in scene.jobs[scene.held]),
        )
        epoch = session.get(Epoch, 1)
        assert epoch is not None
        assert epoch.receipt_count == 4
        assert epoch.total_credit == sum(c - f for *_, c, f in scene.jobs[scene.honest])
        held_credit = sum(c - f for *_, c, f in scene.jobs[scene.held])
        assert ledger.balance(session, ledger.provider_earned(scene.held)) == held_credit
        assert ledger.balance(session, ledger.provider_earned(scene.honest)) == 0
    assert scene.market.client.earnings(scene.held) == 0
    _assert_books_match_chain(scene)
    assert close_epoch(scene.market.ctx()) is None  # still held: nothing to settle


def test_held_receipts_settle_after_release(market: Market) -> None:
    scene = Scene(market)
    _held_up(scene)
    with session_scope(market.sessions) as session:
        reviews.release_review(session, scene.review_id(), "meter glitch, checked", "ops")
    assert close_epoch(market.ctx()) == 2
    with session_scope(market.sessions) as session:
        assert _epochs(session, scene.jobs[scene.held]) == {2}
        assert ledger.balance(session, ledger.provider_earned(scene.held)) == 0
        assert ledger.balance(session, ledger.PROTOCOL_FEES) == 0
        for job_id, *_ in scene.jobs[scene.held]:  # proofs verify against the chain's root
            proof = service.receipt_proof(session, job_id)
            siblings = [bytes.fromhex(p[2:]) for p in proof.proof]
            assert market.client.verify_receipt(2, bytes.fromhex(proof.receipt_hash[2:]), siblings)
    credit = sum(c - f for *_, c, f in scene.jobs[scene.held])
    assert market.client.earnings(scene.held) == credit
    _assert_books_match_chain(scene)


def test_void_refunds_buyers_and_the_receipts_never_settle(market: Market) -> None:
    scene = Scene(market)
    _held_up(scene)
    client = market.client
    with session_scope(market.sessions) as session:
        before = {b: ledger.balance(session, ledger.buyer_available(b)) for b in scene.buyers}
        fees_before = ledger.balance(session, ledger.PROTOCOL_FEES)
    chain_before = (client.last_settled_epoch(), client.totals())

    with session_scope(market.sessions) as session:
        voided = reviews.void_review(session, scene.review_id(), "claims impossible", "ops")
    held_jobs = list(scene.jobs[scene.held])
    assert voided.status == "voided"
    assert (voided.reversed_receipts, voided.reversed_amount) == (
        4,
        sum(c for *_, c, _ in held_jobs),
    )
    assert (client.last_settled_epoch(), client.totals()) == chain_before  # the chain untouched

    with session_scope(market.sessions) as session:
        ledger.check_ledger(session)
        for buyer in scene.buyers:
            refund = sum(c for _, b, c, _ in held_jobs if b == buyer)
            assert ledger.balance(session, ledger.buyer_available(buyer)) == before[buyer] + refund
            assert ledger.balance(session, ledger.buyer_held(buyer)) == 0
        assert ledger.balance(session, ledger.provider_earned(scene.held)) == 0
        fees = sum(f for *_, f in held_jobs)
        assert ledger.balance(session, ledger.PROTOCOL_FEES) == fees_before - fees == 0
        for job_id, buyer, charge, fee in held_jobs:
            transfers = session.scalars(select(Transfer).where(Transfer.job_id == job_id)).all()
            by_key = {t.idempotency_key: t for t in transfers}
            reversal = by_key[f"void-charge:{job_id}"]
            assert sorted((p.account.name, p.amount) for p in reversal.postings) == sorted(
                [
                    (f"buyer:{buyer}:held", charge),
                    (f"provider:{scene.held}:earned", -(charge - fee)),
                    ("protocol:fees", -fee),
                ]
            )
            back = by_key[f"void-release:{job_id}"]
            assert sorted((p.account.name, p.amount) for p in back.postings) == sorted(
                [(f"buyer:{buyer}:held", -charge), (f"buyer:{buyer}:available", charge)]
            )
            assert sum(p.amount for t in (reversal, back) for p in t.postings) == 0
        statuses = session.scalars(
            select(Receipt.check_status).where(Receipt.job_id.in_([j for j, *_ in held_jobs]))
        )
        assert set(statuses) == {"void"}
    # The ledger now equals the contract exactly: the voided charges never left escrow.
    _assert_books_match_chain(scene)
    with session_scope(market.sessions) as session:
        for buyer in scene.buyers:
            assert _unsettled(session, buyer) == 0

    assert close_epoch(market.ctx()) is None  # voided receipts are never settled
    # A later honest receipt of the same provider settles; the voided ones stay out.
    later = scene.receipt(scene.buyers[0], scene.held, 700, 7)
    assert close_epoch(market.ctx()) == 2
    with session_scope(market.sessions) as session:
        assert _epochs(session, held_jobs) == {None}
        assert session.scalar(select(Receipt.epoch).where(Receipt.job_id == later)) == 2
        with pytest.raises(ReviewClosedError):
            reviews.void_review(session, voided.id, "again", "ops")
    assert client.earnings(scene.held) == 700 - 7
    _assert_books_match_chain(scene)


def test_the_check_task_holds_before_the_epoch_closes(market: Market) -> None:
    scene = Scene(market)
    assert check_receipts(market.ctx()) == 8
    assert check_receipts(market.ctx()) == 0
    with session_scope(market.sessions) as session:
        assert reviews.held_providers(session, [scene.honest, scene.held]) == {scene.held}
    schedule = create_celery(Settings()).conf.beat_schedule
    assert schedule["check-receipts"]["task"] == CHECK_RECEIPTS
    _held_up(scene)
