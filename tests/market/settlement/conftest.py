"""Fixtures for settlement: a fresh deployment on the embedded chain or anvil, and helpers
that put receipts (Job + Receipt rows, with their ledger charges) in the database."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

import pytest
from eth_account.signers.local import LocalAccount
from sqlalchemy.orm import Session, sessionmaker

from market.chain.service import MarketChain
from market.config import Settings
from market.db import session_scope, utcnow
from market.jobs.models import Job, JobStatus, Receipt
from market.jobs.receipt_codec import domain_id
from market.ledger import service as ledger
from market.settlement.tasks import TaskContext, watch_deposits
from protocol.chain.connection import EMBEDDED, connect, fund_from_dev_account, new_account
from protocol.chain.deploy import deploy
from protocol.chain.settlement import SettlementClient
from protocol.chain.transactor import Transactor
from protocol.messages import Domain
from tests.support.chain import GAS_MONEY, TEST_DEPLOY_PARAMS

PARAMS = TEST_DEPLOY_PARAMS


@dataclass
class Market:
    """A deployment, its operator, and the task context over the test's database."""

    chain: MarketChain
    sessions: sessionmaker[Session]

    @property
    def client(self) -> SettlementClient:
        return self.chain.client

    def ctx(
        self, confirmations: int = 0, client: SettlementClient | None = None, **settings: Any
    ) -> TaskContext:
        chain = self.chain if client is None else MarketChain(client, self.chain.operator)
        return TaskContext(Settings(confirmations=confirmations, **settings), self.sessions, chain)

    def account(self) -> Transactor:
        account: LocalAccount = new_account()
        fund_from_dev_account(self.client.w3, account.address, GAS_MONEY)
        return Transactor(self.client.w3, account)

    def buyer(self, deposit: int) -> Transactor:
        """A buyer with `deposit` in escrow on-chain, credited in the ledger by the watcher."""
        buyer = self.account()
        self.client.faucet(buyer, buyer.address, deposit)
        self.client.deposit(buyer, deposit)
        watch_deposits(self.ctx())
        return buyer

    def provider(self) -> str:
        """A provider registered on-chain (so credits to it are accepted)."""
        provider = self.account()
        self.client.register_provider(provider, secrets.token_bytes(32))
        return provider.address

    def receipt(self, buyer: str, provider: str, charge: int, fee: int) -> str:
        """A verified receipt of a new job, its hold charged in the ledger; the job id."""
        job_id = "job-" + secrets.token_hex(8)
        with session_scope(self.sessions) as session:
            add_receipt(session, job_id, buyer, provider, charge, fee)
        return job_id


_DOMAIN = Domain(chain_id=31337, settlement_contract="0x5FbDB2315678afecb367f032d93F642f64180aa3")


def add_receipt(
    session: Session, job_id: str, buyer: str, provider: str, charge: int, fee: int
) -> None:
    """Job, hold, charge and receipt rows for one verified job."""
    session.add(
        Job(
            id=job_id,
            buyer_address=buyer,
            provider_address=provider,
            model="m",
            stream=False,
            status=JobStatus.COMPLETED,
            hold_amount=charge + 1,
            price_in_per_mtok=1,
            price_out_per_mtok=1,
            created_at=utcnow(),
        )
    )
    session.flush()
    ledger.place_hold(session, buyer, job_id, charge + 1)
    ledger.settle_hold(session, job_id, charge, provider, fee)
    session.add(
        Receipt(
            job_id=job_id,
            provider_address=provider,
            buyer_address=buyer,
            model="m",
            receipt_hash="0x" + secrets.token_hex(32),
            prompt_tokens=10,
            completion_tokens=20,
            charge=charge,
            fee=fee,
            energy_method="none",
            finished_at_ms=0,
            verified_at=utcnow(),
            version=1,
            model_digest=bytes(32),
            output_digest=bytes(32),
            ticket_digest=bytes(32),
            signer=bytes(32),
            signature=bytes(64),
            domain_id=domain_id(session, _DOMAIN),
        )
    )
    session.flush()


@pytest.fixture(params=[EMBEDDED, "anvil"])
def chain_url(request: pytest.FixtureRequest) -> str:
    """The embedded chain or the session's anvil."""
    return EMBEDDED if request.param == EMBEDDED else str(request.getfixturevalue("anvil_url"))


@pytest.fixture
def market(chain_url: str, session_factory: sessionmaker[Session]) -> Market:
    """A fresh deployment whose admin is the market's operator."""
    w3 = connect(chain_url)
    operator_account: LocalAccount = new_account()
    fund_from_dev_account(w3, operator_account.address, GAS_MONEY)
    operator = Transactor(w3, operator_account)
    deployment = deploy(operator, PARAMS)
    return Market(MarketChain(SettlementClient(w3, deployment), operator), session_factory)
