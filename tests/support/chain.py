"""Deployment parameters shared by the suites that deploy the contracts themselves, and
anvil's controls of its pool and mining."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from web3 import Web3

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


def rpc(w3: Web3, method: str, *params: object) -> Any:
    """The result of a raw JSON-RPC call (anvil's own: `evm_mine`, `txpool_content`, ...)."""
    return w3.provider.make_request(method, list(params))["result"]  # type: ignore[arg-type]


def pooled(w3: Web3, address: str) -> list[dict[str, Any]]:
    """The transactions from `address` waiting in the node's pool, by nonce (anvil)."""
    pool = rpc(w3, "txpool_content")["pending"]
    return list({k.lower(): v for k, v in pool.items()}.get(address.lower(), {}).values())


@contextmanager
def automine_off(w3: Web3) -> Iterator[None]:
    """Anvil mines nothing by itself inside (transactions wait in its pool), as before after."""
    rpc(w3, "evm_setAutomine", False)
    try:
        yield
    finally:
        rpc(w3, "evm_setAutomine", True)


@contextmanager
def mining_once_replaced(w3: Web3, address: str, waiting: str) -> Iterator[None]:
    """Mines one block as soon as the pool holds from `address` anything but the transaction
    `waiting` alone (a replacement of it, or a second transaction behind it)."""
    stop = threading.Event()

    def mine_after_the_next_send() -> None:
        while not stop.wait(0.05):
            if [t["hash"] for t in pooled(w3, address)] != [waiting]:
                rpc(w3, "evm_mine")
                return

    miner = threading.Thread(target=mine_after_the_next_send)
    miner.start()
    try:
        yield
    finally:
        stop.set()
        miner.join()
