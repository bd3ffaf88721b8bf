"""Testnet chores on a development chain (anvil): keys, gas money, roles, provider tokens.

Used by scripts/testnet.sh (through scripts/testnet/stack.py), by the compose file's deployer
and agent entrypoints, and by the end-to-end tests. Only a development chain has the unlocked
account that pays for gas here; nothing in this file belongs on a public chain.

    python scripts/testnet/provision.py init-keys DIR            # deployer, operator, ticket keys
    python scripts/testnet/provision.py fund-operators DIR --rpc-url URL
    python scripts/testnet/provision.py grant-operator DIR --rpc-url URL --deployment FILE
    python scripts/testnet/provision.py fund-provider ADDRESS DIR --rpc-url URL --deployment FILE
    python scripts/testnet/provision.py market-key MARKET_URL    # prints the ticket public key
    python scripts/testnet/provision.py is-deployed --rpc-url URL --deployment FILE  # exit 0/1
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import time
from pathlib import Path

import httpx
from eth_account import Account
from eth_account.signers.local import LocalAccount

from protocol.chain.connection import connect, fund_from_dev_account
from protocol.chain.deploy import OPERATOR_ROLE, Deployment
from protocol.chain.settlement import SettlementClient
from protocol.chain.transactor import Transactor

GAS_MONEY = 10**20
"""Native coin (wei) each testnet account gets: 100 ETH."""

KEY_NAMES = ("deployer", "operator", "ticket")


def _write_secret(path: Path, value: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(value + "\n")


def init_keys(key_dir: Path) -> dict[str, Path]:
    """Writes `deployer.key`, `operator.key` (secp256k1) and `ticket.key` (Ed25519 seed), each
    32 random bytes in hex, unless they exist; returns their paths."""
    paths = {name: key_dir / f"{name}.key" for name in KEY_NAMES}
    for path in paths.values():
        if not path.exists():
            _write_secret(path, secrets.token_hex(32))
    return paths


def read_account(path: Path) -> LocalAccount:
    """The EVM account whose hex key is in `path`."""
    account: LocalAccount = Account.from_key(bytes.fromhex(path.read_text().strip()[-64:]))
    return account


def fund_operators(rpc_url: str, key_dir: Path) -> None:
    """Gas money for the deployer and the operator, from the chain's development account."""
    w3 = connect(rpc_url)
    for name in ("deployer", "operator"):
        address = read_account(key_dir / f"{name}.key").address
        if w3.eth.get_balance(address) < GAS_MONEY // 2:
            fund_from_dev_account(w3, address, GAS_MONEY)


def open_client(rpc_url: str, deployment_file: Path) -> SettlementClient:
    """The settlement client of the deployment in `deployment_file`."""
    return SettlementClient(connect(rpc_url), Deployment.load(deployment_file))


def grant_operator(rpc_url: str, deployment_file: Path, key_dir: Path) -> str:
    """The deployer (the contract's admin) grants OPERATOR_ROLE to the operator key."""
    client = open_client(rpc_url, deployment_file)
    deployer = Transactor(client.w3, read_account(key_dir / "deployer.key"))
    operator = read_account(key_dir / "operator.key").address
    if not client.settlement.functions.hasRole(OPERATOR_ROLE, operator).call():
        client.grant_role(deployer, OPERATOR_ROLE, operator)
    return operator


def fund_provider(
    rpc_url: str, deployment_file: Path, key_dir: Path, address: str, stake: int | None = None
) -> None:
    """Gas money and enough network tokens to stake (default: the contract's minimum)."""
    client = open_client(rpc_url, deployment_file)
    if client.w3.eth.get_balance(address) < GAS_MONEY // 2:  # type: ignore[arg-type]
        fund_from_dev_account(client.w3, address, GAS_MONEY)
    target = client.min_provider_stake() if stake is None else stake
    missing = target - client.network_balance(address) - client.stake_of(address)
    if missing > 0:
        deployer = Transactor(client.w3, read_account(key_dir / "deployer.key"))
        client.transfer_network(deployer, address, missing)


def is_deployed(rpc_url: str, deployment_file: Path) -> bool:
    """Whether `deployment_file` names contracts that exist on this chain (anvil forgets
    everything when it restarts, the deployment file in its volume does not)."""
    if not deployment_file.exists():
        return False
    deployment = Deployment.load(deployment_file)
    w3 = connect(rpc_url)
    if int(w3.eth.chain_id) != deployment.chain_id:
        return False
    return bool(w3.eth.get_code(deployment.settlement))  # type: ignore[arg-type]


def market_key(market_url: str, timeout_s: float = 120.0) -> str:
    """The market's ticket public key from `GET /market`, waiting for the market to answer."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            response = httpx.get(f"{market_url.rstrip('/')}/market", timeout=5.0)
            if response.status_code == 200:
                return str(response.json()["ticket_public_key"])
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"the market at {market_url} did not answer GET /market")
        time.sleep(1.0)


def main(argv: list[str] | None = None) -> int:
    """The command line (see the module's docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("init-keys")
    p.add_argument("key_dir", type=Path)
    p = commands.add_parser("fund-operators")
    p.add_argument("key_dir", type=Path)
    p.add_argument("--rpc-url", required=True)
    p = commands.add_parser("grant-operator")
    p.add_argument("key_dir", type=Path)
    p.add_argument("--rpc-url", required=True)
    p.add_argument("--deployment", type=Path, required=True)
    p = commands.add_parser("fund-provider")
    p.add_argument("address")
    p.add_argument("key_dir", type=Path)
    p.add_argument("--rpc-url", required=True)
    p.add_argument("--deployment", type=Path, required=True)
    p.add_argument("--stake", type=int, default=None)
    p = commands.add_parser("is-deployed")
    p.add_argument("--rpc-url", required=True)
    p.add_argument("--deployment", type=Path, required=True)
    p = commands.add_parser("market-key")
    p.add_argument("market_url")
    args = parser.parse_args(argv)
    if args.command == "init-keys":
        for name, path in init_keys(args.key_dir).items():
            print(f"{name}: {path}")
    elif args.command == "fund-operators":
        fund_operators(args.rpc_url, args.key_dir)
        print("deployer and operator funded")
    elif args.command == "grant-operator":
        print(f"OPERATOR_ROLE: {grant_operator(args.rpc_url, args.deployment, args.key_dir)}")
    elif args.command == "fund-provider":
        fund_provider(args.rpc_url, args.deployment, args.key_dir, args.address, args.stake)
        print(f"funded {args.address}: gas money and network tokens to stake")
    elif args.command == "is-deployed":
        deployed = is_deployed(args.rpc_url, args.deployment)
        print("deployed" if deployed else "not deployed")
        return 0 if deployed else 1
    elif args.command == "market-key":
        print(market_key(args.market_url))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    sys.exit(main())
