"""Opening the market's chain: connect, load or (embedded) deploy, and the operator's sender."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from market.chain.errors import FeeAboveContractLimitError
from market.config import Settings
from market.keys import operator_account
from protocol.chain.connection import connect, fund_from_dev_account
from protocol.chain.deploy import TESTNET, Deployment, deploy
from protocol.chain.settlement import SettlementClient
from protocol.chain.transactor import Transactor
from protocol.messages import Domain

log = logging.getLogger(__name__)

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
    client = SettlementClient(w3, deployment)
    refuse_fee_above_limit(settings.protocol_fee_bps, client.max_fee_bps())
    warn_if_withdrawals_outrun_epochs(client.withdrawal_delay(), settings.epoch_seconds)
    return MarketChain(client=client, operator=operator)


def refuse_fee_above_limit(fee_bps: int, max_fee_bps: int) -> None:
    """Raises when the configured protocol fee exceeds the contract's `maxFeeBps`: receipts
    would be charged that fee and every epoch holding them would revert."""
    if fee_bps > max_fee_bps:
        raise FeeAboveContractLimitError(
            f"MARKET_PROTOCOL_FEE_BPS is {fee_bps}, but the settlement contract lets an epoch "
            f"take at most {max_fee_bps} bps: every epoch would revert; set it to {max_fee_bps} "
            "or less"
        )


def warn_if_withdrawals_outrun_epochs(withdrawal_delay_s: int, epoch_seconds: int) -> bool:
    """Warns (and says True) when a buyer could take back charged escrow before the epoch that
    settles the charge closes: a charge waits up to one epoch, then the close and its batch.
    The market keeps settling the others then (docs/contracts.md), but that buyer's providers
    wait for a new deposit."""
    if withdrawal_delay_s >= 2 * epoch_seconds:
        return False
    log.warning(
        "the contract's withdrawal delay (%d s) is under two epochs (%d s): a buyer can take "
        "escrow the market charged before it settles; lower MARKET_EPOCH_SECONDS",
        withdrawal_delay_s,
        2 * epoch_seconds,
    )
    return True
