"""One suite, two chains: every test here runs on the in-process chain and on a real anvil."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from eth_account.signers.local import LocalAccount
from web3 import Web3

from protocol.chain.connection import EMBEDDED, connect, fund_from_dev_account, new_account
from protocol.chain.deploy import Deployment, deploy
from protocol.chain.settlement import SettlementClient
from protocol.chain.transactor import Transactor
from tests.support.chain import GAS_MONEY, TEST_DEPLOY_PARAMS

PARAMS = TEST_DEPLOY_PARAMS


@dataclass
class Chain:
    """A fresh deployment on one chain, with its admin and a way to make funded accounts."""

    w3: Web3
    deployment: Deployment
    admin: Transactor
    client: SettlementClient

    def account(self) -> Transactor:
        """A new funded account (gas money only)."""
        account: LocalAccount = new_account()
        fund_from_dev_account(self.w3, account.address, GAS_MONEY)
        return Transactor(self.w3, account)

    def buyer(self, deposit: int) -> Transactor:
        """A new account holding `deposit` payment tokens in escrow."""
        buyer = self.account()
        self.client.faucet(buyer, buyer.address, deposit)
        self.client.deposit(buyer, deposit)
        return buyer

    def provider(self, key: bytes, stake: int = PARAMS.min_provider_stake) -> Transactor:
        """A new account that bound `key` and staked `stake` network tokens."""
        provider = self.account()
        self.client.register_provider(provider, key)
        if stake:
            self.client.transfer_network(self.admin, provider.address, stake)
            self.client.stake(provider, stake)
        return provider


@pytest.fixture(params=[EMBEDDED, "anvil"])
def chain(request: pytest.FixtureRequest) -> Chain:
    """A fresh deployment on the in-process chain or on the session's anvil."""
    url = EMBEDDED if request.param == EMBEDDED else request.getfixturevalue("anvil_url")
    w3 = connect(url)
    admin_account: LocalAccount = new_account()
    fund_from_dev_account(w3, admin_account.address, GAS_MONEY)
    admin = Transactor(w3, admin_account)
    deployment = deploy(admin, PARAMS)
    return Chain(w3=w3, deployment=deployment, admin=admin, client=SettlementClient(w3, deployment))
