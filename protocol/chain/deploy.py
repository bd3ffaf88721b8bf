"""Deploying the three contracts from the shipped artifacts, and the record of a deployment."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from eth_utils.crypto import keccak
from web3 import Web3

from protocol.chain.artifacts import load_artifact
from protocol.chain.transactor import Transactor

PAYMENT_DECIMALS = 6
NETWORK_DECIMALS = 18
OPERATOR_ROLE = keccak(text="OPERATOR_ROLE")
VERIFIER_ROLE = keccak(text="VERIFIER_ROLE")
PAUSER_ROLE = keccak(text="PAUSER_ROLE")


@dataclass(frozen=True)
class DeployParams:
    """What a deployment decides: delays, stake, fee limit, reward cap, faucet."""

    withdrawal_delay_s: int = 3600
    unstake_delay_s: int = 7 * 86400
    min_provider_stake: int = 1_000 * 10**NETWORK_DECIMALS
    max_fee_bps: int = 1_000
    min_reward_interval_s: int = 3_600
    epoch_reward_cap: int = 10_000 * 10**NETWORK_DECIMALS
    network_genesis_supply: int = 10_000_000 * 10**NETWORK_DECIMALS
    faucet_enabled: bool = False
    faucet_max: int = 1_000_000 * 10**PAYMENT_DECIMALS
    payment_initial_supply: int = 0


TESTNET = DeployParams(unstake_delay_s=600, min_reward_interval_s=0, faucet_enabled=True)
"""A local testnet's deployment: short unstake delay, rewards every epoch, a faucet. The
withdrawal delay stays an hour, several times the market's default epoch, so that a charge
settles before its buyer can take the escrow back (docs/contracts.md)."""


@dataclass(frozen=True)
class Deployment:
    """Where the contracts live on one chain; written by the deployer, read by everyone else."""

    chain_id: int
    payment_token: str
    network_token: str
    settlement: str
    block: int

    def save(self, path: Path) -> None:
        """Writes the deployment as JSON."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> Deployment:
        """Reads a deployment written by `save`."""
        return cls(**json.loads(path.read_text()))


def _deploy(sender: Transactor, name: str, *args: object) -> str:
    artifact = load_artifact(name)
    factory = sender.w3.eth.contract(abi=artifact.abi, bytecode=artifact.bytecode)
    receipt = sender.transact(factory.constructor(*args))
    return str(receipt["contractAddress"])


def deploy(sender: Transactor, params: DeployParams = TESTNET) -> Deployment:
    """Deploys payment token, network token and settlement, and binds the reward minter.

    The sender becomes the settlement admin (and, at first, operator, verifier and pauser) and
    holds the network token's genesis supply and any initial payment-token supply.
    """
    w3: Web3 = sender.w3
    admin = sender.address
    start_block = w3.eth.block_number
    payment = _deploy(
        sender,
        "PaymentToken",
        "Test USD",
        "tUSD",
        params.faucet_enabled,
        params.faucet_max,
        admin,
        params.payment_initial_supply,
    )
    network = _deploy(
        sender, "NetworkToken", admin, params.network_genesis_supply, params.epoch_reward_cap
    )
    config = (
        params.withdrawal_delay_s,
        params.unstake_delay_s,
        params.min_provider_stake,
        params.max_fee_bps,
        params.min_reward_interval_s,
    )
    settlement = _deploy(sender, "Settlement", admin, payment, network, config)
    token = w3.eth.contract(address=network, abi=load_artifact("NetworkToken").abi)  # type: ignore[call-overload]
    sender.transact(token.functions.bindMinter(settlement))
    return Deployment(
        chain_id=w3.eth.chain_id,
        payment_token=payment,
        network_token=network,
        settlement=settlement,
        block=start_block,
    )
