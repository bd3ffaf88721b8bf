"""Opening the market's chain: connect, load or (embedded) deploy, and the operator's sender."""

from __future__ import annotations

from dataclasses import dataclass

from market.config import Settings
from market.keys import operator_account
from protocol.chain.connection import connect, fund_from_dev_account
from protocol.chain.deploy import TESTNET, Deployment, deploy
from protocol.chain.settlement import SettlementClient
from protocol.chain.transactor import Transactor
from protocol.messages import Domain

GAS_MONEY = 10**20


@dataclass
class MarketChain:
    """The chain as the market uses it."""

    client: SettlementClient
    operator: Transactor

    @property
    def deployment(self) -> Deployment:
        """Where the contracts are."""
        return self.client.deployment

    @property
    def domain(self) -> Domain:
        """The domain every signed message of this deployment names."""
        return Domain(
            chain_id=self.deployment.chain_id,
            settlement_contract=self.deployment.settlement,
        )


def open_chain(settings: Settings) -> MarketChain:
    """Connects to the configured chain; the embedded chain is fresh, so it deploys there."""
    w3 = connect(settings.chain_rpc_url)
    operator = Transactor(w3, operator_account(settings))
    if settings.embedded_chain:
        fund_from_dev_account(w3, operator.address, GAS_MONEY)
        deployment = deploy(operator, TESTNET)
    else:
        assert settings.deployment_file is not None  # the settings insist on it
        deployment = Deployment.load(settings.deployment_file)
    return MarketChain(client=SettlementClient(w3, deployment), operator=operator)
