"""Opening a chain: the embedded in-process EVM (eth-tester on py-evm) or an RPC URL."""

from __future__ import annotations

from typing import Any

import requests
from eth_account.signers.local import LocalAccount
from web3 import Web3
from web3.exceptions import ProviderConnectionError
from web3.providers.eth_tester import EthereumTesterProvider
from web3.types import Wei

from protocol.chain.errors import ChainUnavailable

EMBEDDED = "embedded"


def connect(rpc_url: str, timeout_s: float = 30.0) -> Web3:
    """Connects to `rpc_url`, or starts a fresh in-process chain for `"embedded"`."""
    if rpc_url == EMBEDDED:
        return Web3(EthereumTesterProvider())
    w3 = Web3(Web3.HTTPProvider(rpc_url, request_kwargs={"timeout": timeout_s}))
    try:
        w3.eth.chain_id  # noqa: B018 - one round trip proves the endpoint answers
    except (requests.RequestException, ProviderConnectionError, OSError) as exc:
        raise ChainUnavailable(f"chain RPC at {rpc_url} is unreachable: {exc}") from exc
    return w3


def is_embedded(w3: Web3) -> bool:
    """Whether `w3` talks to the in-process chain."""
    return isinstance(w3.provider, EthereumTesterProvider)


def fund_from_dev_account(w3: Web3, to: str, wei: int) -> None:
    """Sends `wei` of gas money to `to` from the chain's first unlocked development account.

    Only development chains (eth-tester, anvil) have such accounts; on any other chain this
    raises `ChainUnavailable` with the reason.
    """
    accounts = w3.eth.accounts
    if not accounts:
        raise ChainUnavailable("this chain has no unlocked development account to fund from")
    tx_hash = w3.eth.send_transaction({"from": accounts[0], "to": to, "value": Wei(wei)})
    w3.eth.wait_for_transaction_receipt(tx_hash)


def advance_time(w3: Web3, seconds: int) -> None:
    """Moves a development chain's clock forward by `seconds` and mines a block."""
    if is_embedded(w3):
        provider: Any = w3.provider
        tester = provider.ethereum_tester
        latest = tester.get_block_by_number("latest")
        tester.time_travel(int(latest["timestamp"]) + seconds)
        tester.mine_blocks(1)
        return
    w3.provider.make_request("evm_increaseTime", [seconds])  # type: ignore[arg-type]
    w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]


def new_account() -> LocalAccount:
    """A fresh random EVM account (for tests and the embedded demo)."""
    from eth_account import Account

    account: LocalAccount = Account.create()
    return account
