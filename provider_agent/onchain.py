"""Opening the agent's settlement deployment, with errors that say what to fix."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

from protocol.chain.connection import connect
from protocol.chain.deploy import NETWORK_DECIMALS, PAYMENT_DECIMALS, Deployment
from protocol.chain.errors import ChainError
from protocol.chain.settlement import SettlementClient

ZERO_KEY = bytes(32)


class ChainSetupError(Exception):
    """The chain or the deployment file cannot be used; the message says why and what to do."""


def load_deployment(path: Path) -> Deployment:
    """The deployment record at `path`, or `ChainSetupError`."""
    try:
        return Deployment.load(path)
    except FileNotFoundError as exc:
        raise ChainSetupError(f"deployment file {path} does not exist") from exc
    except (OSError, ValueError, TypeError) as exc:
        raise ChainSetupError(f"deployment file {path} is not a deployment record: {exc}") from exc


def open_settlement(
    rpc_url: str, deployment_file: Path, timeout_s: float = 10.0
) -> SettlementClient:
    """Connect to `rpc_url` and check it is the chain, with the contract, the file names."""
    deployment = load_deployment(deployment_file)
    try:
        w3 = connect(rpc_url, timeout_s)
        chain_id = int(w3.eth.chain_id)
        code = bytes(w3.eth.get_code(deployment.settlement))  # type: ignore[arg-type]
    except ChainError as exc:
        raise ChainSetupError(str(exc)) from exc
    except Exception as exc:  # web3 raises many kinds; all mean "cannot use this RPC"
        raise ChainSetupError(f"chain RPC at {rpc_url} failed: {exc}") from exc
    if chain_id != deployment.chain_id:
        raise ChainSetupError(
            f"chain id {chain_id} at {rpc_url} differs from {deployment.chain_id}"
            f" in {deployment_file}"
        )
    if not code:
        raise ChainSetupError(
            f"no contract at {deployment.settlement} on chain {chain_id}:"
            f" {deployment_file} is stale (was the chain reset?)"
        )
    return SettlementClient(w3, deployment)


def _units(amount: int, decimals: int) -> str:
    value = Decimal(amount).scaleb(-decimals).normalize()
    return f"{value:,f}"


def network_tokens(amount: int) -> str:
    """A network-token amount in base units, shown in whole tokens."""
    return f"{_units(amount, NETWORK_DECIMALS)} network tokens"


def payment_tokens(amount: int) -> str:
    """A payment-token amount in base units, shown in whole tokens."""
    return f"{_units(amount, PAYMENT_DECIMALS)} payment tokens"
