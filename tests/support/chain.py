"""Deployment parameters shared by the suites that deploy the contracts themselves."""

from __future__ import annotations

from protocol.chain.deploy import DeployParams

GAS_MONEY = 10**20
"""Wei given to each test account for gas."""

TEST_DEPLOY_PARAMS = DeployParams(
    withdrawal_delay_s=60,
    unstake_delay_s=600,
    min_provider_stake=1_000 * 10**18,
    max_fee_bps=1_000,
    min_reward_interval_s=0,
    epoch_reward_cap=500 * 10**18,
    faucet_enabled=True,
    faucet_max=10_000 * 10**6,
)
"""Short delays, no reward interval and a faucet: what the chain and settlement tests need."""
