"""The embedded demo: the whole money path on an in-process chain, printed step by step.

Deploys the contracts from the shipped artifacts, funds a buyer and a provider, lets the buyer
deposit and the provider bind its Ed25519 key and stake, settles one sample epoch whose receipts
are committed by a Merkle root, proves a receipt against the on-chain root, and pays the
provider out. Every amount is an integer in token base units.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from nacl.signing import SigningKey

from protocol.chain.connection import EMBEDDED, connect, fund_from_dev_account, new_account
from protocol.chain.deploy import TESTNET, Deployment, deploy
from protocol.chain.settlement import Credit, Debit, EpochBatch, SettlementClient
from protocol.chain.transactor import Transactor
from protocol.merkle import MerkleTree

GAS_MONEY = 10**20
USD = 10**6  # payment-token base units per token (6 decimals)


@dataclass(frozen=True)
class SampleUsage:
    """The sample epoch's metered usage: tokens served and the provider's prices."""

    prompt_tokens: int = 18_000
    completion_tokens: int = 42_000
    price_in_per_mtok: int = 150_000  # 0.15 tUSD per million input tokens
    price_out_per_mtok: int = 600_000  # 0.60 tUSD per million output tokens
    fee_bps: int = 500
    receipts: int = 120


@dataclass(frozen=True)
class DemoOutcome:
    """What the demo did, for printing and for tests."""

    deployment: Deployment
    buyer: str
    provider: str
    deposit: int
    charge: int
    fee: int
    payout: int
    reward: int
    receipts_root: bytes
    settle_tx: str
    settle_gas: int
    proof_verified: bool
    escrow_after: int
    provider_balance_after: int


def charge_for(usage: SampleUsage) -> int:
    """Price of the usage in base units, rounded up to the base unit (never undercharged)."""
    numerator = (
        usage.prompt_tokens * usage.price_in_per_mtok
        + usage.completion_tokens * usage.price_out_per_mtok
    )
    return -(-numerator // 1_000_000)


def run_demo(usage: SampleUsage | None = None) -> DemoOutcome:
    """Runs the money path end to end on a fresh in-process chain."""
    usage = usage or SampleUsage()
    w3 = connect(EMBEDDED)
    operator, buyer, provider = (
        Transactor(w3, account) for account in (new_account(), new_account(), new_account())
    )
    for party in (operator, buyer, provider):
        fund_from_dev_account(w3, party.address, GAS_MONEY)
    deployment = deploy(operator, TESTNET)
    chain = SettlementClient(w3, deployment)

    deposit = 25 * USD
    chain.faucet(buyer, buyer.address, deposit)
    chain.deposit(buyer, deposit)

    identity = SigningKey(hashlib.sha256(b"demo provider identity").digest())
    chain.register_provider(provider, bytes(identity.verify_key))
    stake = chain.min_provider_stake()
    chain.transfer_network(operator, provider.address, stake)
    chain.stake(provider, stake)

    receipt_hashes = [
        hashlib.sha256(f"receipt {i}".encode()).digest() for i in range(usage.receipts)
    ]
    tree = MerkleTree(receipt_hashes)
    charge = charge_for(usage)
    fee = charge * usage.fee_bps // 10_000
    reward = 10 * 10**18
    batch = EpochBatch(
        epoch=chain.last_settled_epoch() + 1,
        receipts_root=tree.root,
        receipt_count=len(receipt_hashes),
        fee=fee,
        debits=[Debit(buyer.address, charge)],
        credits=[Credit(provider.address, charge - fee)],
        rewards=[Credit(provider.address, reward)],
    )
    settled = chain.settle_epoch(operator, batch)
    proof_verified = chain.verify_receipt(batch.epoch, receipt_hashes[7], tree.proof(7))
    chain.withdraw_earnings(provider)
    return DemoOutcome(
        deployment=deployment,
        buyer=buyer.address,
        provider=provider.address,
        deposit=deposit,
        charge=charge,
        fee=fee,
        payout=charge - fee,
        reward=reward,
        receipts_root=tree.root,
        settle_tx="0x" + bytes(settled["transactionHash"]).hex(),
        settle_gas=int(settled["gasUsed"]),
        proof_verified=proof_verified,
        escrow_after=chain.escrow(buyer.address),
        provider_balance_after=chain.payment_balance(provider.address),
    )
