"""`market`: the marketplace service's command line."""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="The energy-metered inference market.", no_args_is_help=True)
chain_app = typer.Typer(help="Contracts on a chain: deploy and inspect.", no_args_is_help=True)
app.add_typer(chain_app, name="chain")
db_app = typer.Typer(help="The market's database.", no_args_is_help=True)
app.add_typer(db_app, name="db")
console = Console(width=None if sys.stdout.isatty() else 140)


def _tusd(amount: int) -> str:
    whole, frac = divmod(amount, 10**6)
    return f"{whole:,}.{frac:06d} tUSD ({amount:,} base units)"


@app.command()
def demo() -> None:
    """Run the money path on the embedded chain and print what happened."""
    from market.demo import SampleUsage, run_demo

    usage = SampleUsage()
    with console.status("deploying contracts on the embedded chain and settling an epoch"):
        outcome = run_demo(usage)
    d = outcome.deployment
    table = Table(title="Sample epoch on the embedded chain", show_header=False)
    table.add_row("chain id", str(d.chain_id))
    table.add_row("settlement contract", d.settlement)
    table.add_row("buyer", outcome.buyer)
    table.add_row("provider", outcome.provider)
    table.add_row("buyer deposit", _tusd(outcome.deposit))
    table.add_row(
        "usage",
        f"{usage.prompt_tokens:,} prompt + {usage.completion_tokens:,} completion tokens "
        f"in {usage.receipts} receipts",
    )
    table.add_row("buyer charged", _tusd(outcome.charge))
    table.add_row("protocol fee", _tusd(outcome.fee))
    table.add_row("provider payout", _tusd(outcome.payout))
    table.add_row("network-token reward", f"{outcome.reward // 10**18:,} JOULE")
    table.add_row("receipts Merkle root", "0x" + outcome.receipts_root.hex())
    table.add_row("settlement tx", f"{outcome.settle_tx} ({outcome.settle_gas:,} gas)")
    table.add_row("receipt proof checked on-chain", "yes" if outcome.proof_verified else "NO")
    table.add_row("buyer escrow after", _tusd(outcome.escrow_after))
    table.add_row("provider wallet after withdrawal", _tusd(outcome.provider_balance_after))
    console.print(table)


@app.command()
def serve(
    host: str | None = typer.Option(None, help="Interface (default MARKET_HOST)"),
    port: int | None = typer.Option(None, help="Port (default MARKET_PORT)"),
    workers: int = typer.Option(1, help="uvicorn worker processes"),
) -> None:
    """Serve the buyer and provider APIs (migrating the embedded database first)."""
    import uvicorn

    from market.config import get_settings
    from market.db import migrate

    settings = get_settings()
    if settings.is_sqlite:
        settings.var_dir.mkdir(parents=True, exist_ok=True)
        migrate(settings.database_url)
    uvicorn.run(
        "market.app:create_app",
        factory=True,
        host=host or settings.host,
        port=port or settings.port,
        workers=workers,
        log_level="info",
    )


@db_app.command("upgrade")
def db_upgrade(revision: str = typer.Argument("head", help="Alembic revision")) -> None:
    """Apply the migrations to MARKET_DATABASE_URL."""
    from market.config import get_settings, redact_url
    from market.db import migrate

    settings = get_settings()
    migrate(settings.database_url, revision)
    console.print(f"database {redact_url(settings.database_url)} is at {revision}")


@chain_app.command("deploy")
def chain_deploy(
    rpc_url: str = typer.Option(..., envvar="MARKET_CHAIN_RPC_URL", help="JSON-RPC URL"),
    out: Path = typer.Option(Path("deployment.json"), help="Where to write the addresses"),
    faucet: bool = typer.Option(True, help="Enable the payment-token faucet (testnets only)"),
) -> None:
    """Deploy the contracts with a funded key from MARKET_DEPLOYER_KEY (or a dev account)."""
    import os
    from dataclasses import replace

    from eth_account import Account

    from protocol.chain.connection import connect, fund_from_dev_account
    from protocol.chain.deploy import TESTNET, deploy
    from protocol.chain.transactor import Transactor

    w3 = connect(rpc_url)
    key = os.environ.get("MARKET_DEPLOYER_KEY")
    account = Account.from_key(key) if key else Account.create()
    if not key:
        fund_from_dev_account(w3, account.address, 10**20)
        console.print("[yellow]no MARKET_DEPLOYER_KEY: using a fresh dev-funded key[/]")
    deployment = deploy(Transactor(w3, account), replace(TESTNET, faucet_enabled=faucet))
    deployment.save(out)
    console.print(f"deployed on chain {deployment.chain_id}: {deployment}")
    console.print(f"wrote {out}")


@app.command()
def worker(
    concurrency: int = typer.Option(2, help="Worker processes"),
    loglevel: str = typer.Option("INFO", help="Log level"),
) -> None:
    """Run a Celery worker for the settlement tasks (MARKET_BROKER_URL must be redis://)."""
    from market.worker import celery_app

    celery_app().worker_main(
        ["worker", f"--loglevel={loglevel}", f"--concurrency={concurrency}", "--pool=prefork"]
    )


@app.command()
def beat(
    schedule: Path = typer.Option(Path(".var/celerybeat-schedule"), help="Beat's state file"),
    loglevel: str = typer.Option("INFO", help="Log level"),
) -> None:
    """Run Celery beat: the deposit watcher every few seconds, epoch close every epoch."""
    from market.worker import celery_app

    schedule.parent.mkdir(parents=True, exist_ok=True)
    celery_app().start(["beat", f"--loglevel={loglevel}", f"--schedule={schedule}"])
