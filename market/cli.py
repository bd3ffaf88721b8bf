"""`market`: the marketplace service's command line."""

from __future__ import annotations

import sys
from collections.abc import Generator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich import box
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

app = typer.Typer(help="The energy-metered inference market.", no_args_is_help=True)
chain_app = typer.Typer(
    help="Contracts on a chain: deploy, and check the ledger against them.", no_args_is_help=True
)
app.add_typer(chain_app, name="chain")
db_app = typer.Typer(help="The market's database.", no_args_is_help=True)
app.add_typer(db_app, name="db")
review_app = typer.Typer(
    help="Payment reviews: provider payments held after failed plausibility checks.",
    no_args_is_help=True,
)
app.add_typer(review_app, name="review")
epoch_app = typer.Typer(
    help="Settlement epochs: what each settled or waits on.", no_args_is_help=True
)
app.add_typer(epoch_app, name="epoch")
console = Console(width=None if sys.stdout.isatty() else 140)


@app.command()
def demo(
    work_dir: Path | None = typer.Option(
        None, help="Where the demo keeps its state and logs (default .var/demo, fresh each run)"
    ),
    epoch_seconds: int = typer.Option(5, min=1, help="Epoch length of the embedded market"),
    max_tokens: int = typer.Option(48, min=1, help="max_tokens of the demo's request"),
) -> None:
    """Send a real request through market, provider agent and vLLM, then settle it on-chain."""
    import contextlib
    import signal
    import time
    from collections.abc import Iterator
    from types import FrameType

    from market.demo import DemoError, DemoOptions, energy_rows, run_demo, tusd

    class Steps:
        """A spinner per step, then a tick, how long it took, and what the step noted."""

        def __init__(self) -> None:
            self.notes: list[str] | None = None

        @contextlib.contextmanager
        def step(self, title: str) -> Iterator[None]:
            started, self.notes = time.monotonic(), []
            try:
                with console.status(f"[bold]{title}[/]…"):
                    yield
            except BaseException:
                console.print(f"[red]✗[/] {title}")
                raise
            else:
                elapsed = time.monotonic() - started
                console.print(f"[green]✓[/] {title} [dim]({elapsed:.1f} s)[/]")
            finally:
                notes, self.notes = self.notes, None
                for text in notes:
                    console.print(f"    [dim]{text}[/]", highlight=False)

        def note(self, text: str) -> None:
            if self.notes is None:
                console.print(f"    [dim]{text}[/]", highlight=False)
            else:
                self.notes.append(text)

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    options = DemoOptions(epoch_seconds=epoch_seconds, max_tokens=max_tokens)
    if work_dir is not None:
        options = DemoOptions(work_dir=work_dir, epoch_seconds=epoch_seconds, max_tokens=max_tokens)
    console.rule("[bold]Joule Market: one real request, end to end, on the embedded default")
    try:
        outcome = run_demo(options, Steps())
    except KeyboardInterrupt:
        console.print("[yellow]interrupted: everything the demo started was stopped[/]")
        raise typer.Exit(130) from None
    except DemoError as exc:
        console.print(f"[red]demo failed:[/] {exc}")
        console.print(f"logs: {options.work_dir / 'logs'}/")
        raise typer.Exit(1) from None

    console.print()
    console.print(
        "[bold]Answer[/] (a tiny random-weight model: the words are noise, the tokens real)"
    )
    console.print(f"  {outcome.answer!r}", highlight=False)
    request = Table(title="The request", show_header=False, title_justify="left")
    request.add_row("model", outcome.model)
    request.add_row("provider", f"{outcome.provider} ({outcome.agent_url})")
    request.add_row("job", outcome.job_id)
    request.add_row("prompt tokens", f"{outcome.prompt_tokens:,}")
    request.add_row("completion tokens", f"{outcome.completion_tokens:,}")
    request.add_row(
        "prices per million tokens",
        f"in {tusd(outcome.price_in_per_mtok)}, out {tusd(outcome.price_out_per_mtok)}",
    )
    request.add_row("price charged", tusd(outcome.charge))
    request.add_row("protocol fee", tusd(outcome.fee))
    for name, value in energy_rows(outcome.energy, outcome.energy_reason):
        request.add_row(name, value)
    request.add_row("receipt hash", outcome.receipt_hash)
    console.print(request)

    money = Table(
        title="Settlement on the in-process chain", show_header=False, title_justify="left"
    )
    money.add_row("chain / Settlement", f"{outcome.chain_id} / {outcome.settlement_contract}")
    money.add_row("epoch", f"{outcome.epoch} (settled by {outcome.settled_by})")
    money.add_row("settlement tx", f"{outcome.settle_tx} ({outcome.settle_gas:,} gas)")
    money.add_row("receipts Merkle root", outcome.receipts_root)
    money.add_row(
        "network-token reward",
        f"{outcome.reward / 10**18:,.6f} network tokens ({outcome.reward:,} base units)"
        if outcome.reward
        else "none (the market's epoch batches carry no rewards yet)",
    )
    money.add_row("buyer", outcome.buyer)
    money.add_row(
        "buyer escrow",
        f"{tusd(outcome.escrow_before)} → {tusd(outcome.escrow_after)} "
        f"(−{outcome.escrow_before - outcome.escrow_after:,})",
    )
    money.add_row(
        "provider payout (charge − fee)",
        f"{tusd(outcome.payout)} = {outcome.charge:,} − {outcome.fee:,}",
    )
    money.add_row(
        "provider wallet",
        f"{tusd(outcome.provider_wallet_before)} → {tusd(outcome.provider_wallet_after)}",
    )
    money.add_row(
        "receipt proof checked on-chain",
        ("verified" if outcome.proof_verified else "[red]NOT verified[/]")
        + ("; a forged leaf is rejected" if outcome.tampered_proof_rejected else ""),
    )
    console.print(money)
    timings = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in outcome.timings.items())
    console.print(f"[dim]timings: {timings}[/]")
    console.print(f"[dim]state and logs: {options.work_dir}/[/]")
    ok = (
        outcome.proof_verified
        and outcome.escrow_before - outcome.escrow_after == outcome.charge
        and outcome.payout == outcome.charge - outcome.fee
    )
    if not ok:
        console.print("[red]the amounts do not add up[/]")
        raise typer.Exit(1)


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


@chain_app.command("reconcile")
def chain_reconcile() -> None:
    """Check the ledger against the contract (MARKET_DATABASE_URL, MARKET_CHAIN_RPC_URL,
    MARKET_DEPLOYMENT_FILE); exit 1 if anything disagrees. The worker runs this every few
    minutes; its results are on /metrics."""
    from market.config import get_settings
    from market.db import create_engine, make_session_factory, session_scope
    from market.settlement.reconcile import reconcile
    from protocol.chain.connection import connect
    from protocol.chain.deploy import Deployment
    from protocol.chain.settlement import SettlementClient

    settings = get_settings()
    if settings.embedded_chain or settings.deployment_file is None:
        console.print(
            "[red]the embedded chain lives inside the API process:[/] its reconciliation "
            "runs there and shows on /metrics (market_reconciliation_differences)"
        )
        raise typer.Exit(1)
    client = SettlementClient(
        connect(settings.chain_rpc_url), Deployment.load(settings.deployment_file)
    )
    engine = create_engine(settings.database_url)
    try:
        with session_scope(make_session_factory(engine)) as session:
            result = reconcile(session, client)
    finally:
        engine.dispose()
    if result is None:
        console.print("the chain watcher has booked no block yet: nothing to compare")
        return
    scope = "every account" if result.accounts_compared else "totals only (a settlement in flight)"
    console.print(
        f"block {result.block}: chain epoch {result.chain_epoch}, ledger epoch "
        f"{result.ledger_epoch}; {result.buyers} buyers, {result.providers} providers; "
        f"compared {scope}; the contract holds {result.holdings} "
        f"(+{result.token_surplus} tokens sent to it directly)",
        highlight=False,
    )
    if result.agrees:
        console.print("[green]the ledger agrees with the chain[/]")
        return
    table = Table("what", "chain (or receipts)", "ledger")
    for d in result.differences:
        table.add_row(d.what, str(d.expected), str(d.booked))
    console.print(table)
    if result.ledger_error is not None:
        console.print(f"[red]ledger books:[/] {result.ledger_error}", highlight=False)
    raise typer.Exit(1)


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


# -- payment reviews ------------------------------------------------------------------------


@contextmanager
def _database() -> Generator[Session, None, None]:
    """A transaction on MARKET_DATABASE_URL; a review error is printed and exits 1."""
    from market.config import get_settings
    from market.db import create_engine, make_session_factory, session_scope
    from market.errors import MarketError

    engine = create_engine(get_settings().database_url)
    try:
        with session_scope(make_session_factory(engine)) as session:
            yield session
    except MarketError as exc:
        console.print(f"[red]{exc.code}:[/] {exc}", highlight=False)
        raise typer.Exit(1) from None
    finally:
        engine.dispose()


def _when(value: datetime | None) -> str:
    return "" if value is None else value.strftime("%Y-%m-%d %H:%M:%S")


@review_app.command("list")
def review_list(
    status: str | None = typer.Option(None, help="open, released or voided (default: all)"),
    limit: int = typer.Option(100, min=1, help="At most this many, newest first"),
) -> None:
    """List payment reviews, newest first."""
    from market.reviews.models import ReviewStatus
    from market.reviews.service import list_reviews

    try:
        wanted = None if status is None else ReviewStatus(status)
    except ValueError:
        raise typer.BadParameter("open, released or voided", param_hint="--status") from None
    with _database() as session:
        reviews = list_reviews(session, wanted, limit)
    table = Table("id", "provider", "status", "opened", "updated", "decided by", "note")
    for r in reviews:
        table.add_row(
            str(r.id),
            r.provider,
            r.status,
            _when(r.opened_at),
            _when(r.updated_at),
            r.decided_by or "",
            r.note or "",
        )
    console.print(table)


@review_app.command("show")
def review_show(review_id: int = typer.Argument(..., help="The review's id")) -> None:
    """Show a review: why it was opened, what it withholds, how it was decided."""
    from market.reviews.service import get_review

    with _database() as session:
        review = get_review(session, review_id)
    console.print(f"review {review.id}: provider {review.provider}, [bold]{review.status}[/]")
    console.print(f"opened {_when(review.opened_at)}, last extended {_when(review.updated_at)}")
    if review.status == "open":
        console.print(
            f"withheld: {review.withheld_receipts} receipts, charges {review.withheld_amount} "
            "base units"
        )
    else:
        console.print(
            f"{review.status} {_when(review.decided_at)} by {review.decided_by}: {review.note}",
            highlight=False,
        )
    if review.status == "voided":
        console.print(
            f"reversed to buyers: {review.reversed_receipts} receipts, "
            f"{review.reversed_amount} base units"
        )
    table = Table("source", "seq / job", "check", "kind", "reason")
    for reason in review.reasons:
        where = reason.job_id if reason.job_id is not None else str(reason.attestation_seq)
        table.add_row(reason.source, where, reason.check, reason.kind, reason.reason)
    console.print(table)


# -- epochs -----------------------------------------------------------------------------------


@epoch_app.command("list")
def epoch_list(
    limit: int = typer.Option(20, min=1, max=500, help="At most this many, newest first"),
    before: int | None = typer.Option(None, min=1, help="Only epochs numbered below this"),
) -> None:
    """List epochs, newest first, with their amounts and settlement transaction.

    Amounts are base units (rewards: of the network token); a submitted epoch shows the
    transaction it waits on (the last one sent)."""
    from market.settlement.service import list_epochs

    with _database() as session:
        epochs = list_epochs(session, limit, before)
    table = Table(
        "epoch", "status", "receipts", "debit", "credit", "fee", "reward", box=box.SIMPLE_HEAD
    )
    table.add_column("tx (mined, or waited on)", no_wrap=True)
    for e in epochs:
        table.add_row(
            str(e.number),
            e.status,
            str(e.receipt_count),
            str(e.total_debit),
            str(e.total_credit),
            str(e.fee),
            str(e.total_reward),
            e.tx_hash or (e.pending_tx.tx_hash if e.pending_tx else ""),
        )
    console.print(table)


@epoch_app.command("show")
def epoch_show(number: int = typer.Argument(..., help="The epoch's number")) -> None:
    """Show an epoch: its root, transaction, and each buyer's debit and provider's credit."""
    from market.settlement.service import get_epoch

    with _database() as session:
        epoch = get_epoch(session, number)
    console.print(
        f"epoch {epoch.number}: [bold]{epoch.status}[/], {epoch.receipt_count} receipts, "
        f"root {epoch.receipts_root}",
        highlight=False,
    )
    console.print(
        f"debit {epoch.total_debit} = credit {epoch.total_credit} + fee {epoch.fee} base units;"
        f" reward {epoch.total_reward}" + (f" ({epoch.reward_note})" if epoch.reward_note else ""),
        highlight=False,
    )
    console.print(
        f"created {_when(epoch.created_at)}, submitted {_when(epoch.submitted_at)}, "
        f"settled {_when(epoch.settled_at)}",
        highlight=False,
    )
    if epoch.tx_hash is not None:
        console.print(f"settled by {epoch.tx_hash} in block {epoch.block}", highlight=False)
    if (pending := epoch.pending_tx) is not None:
        console.print(
            f"waiting on {pending.tx_hash}: nonce {pending.nonce}, max fee "
            f"{pending.max_fee_per_gas} wei/gas (priority {pending.max_priority_fee_per_gas}), "
            f"sent {_when(pending.sent_at)}",
            highlight=False,
        )
    table = Table("kind", "address", "amount")
    for line in epoch.lines:
        table.add_row(line.kind, line.address, str(line.amount))
    console.print(table)


def _operator() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "operator"


@review_app.command("release")
def review_release(
    review_id: int = typer.Argument(..., help="The review's id"),
    note: str = typer.Option(..., help="Why the claims are acceptable"),
    by: str | None = typer.Option(None, help="Who decides (default: the login name)"),
) -> None:
    """Release an open review: the withheld receipts settle in the next epoch."""
    from market.reviews.service import release_review

    with _database() as session:
        review = release_review(session, review_id, note, by or _operator())
    console.print(f"review {review.id} released: {review.provider}'s receipts settle next epoch")


@review_app.command("void")
def review_void(
    review_id: int = typer.Argument(..., help="The review's id"),
    note: str = typer.Option(..., help="Why the claims are judged false"),
    by: str | None = typer.Option(None, help="Who decides (default: the login name)"),
) -> None:
    """Void an open review: the provider's unsettled charges go back to their buyers."""
    from market.reviews.service import void_review

    with _database() as session:
        review = void_review(session, review_id, note, by or _operator())
    console.print(
        f"review {review.id} voided: {review.reversed_receipts} receipts of {review.provider} "
        f"reversed, {review.reversed_amount} base units back to buyers"
    )
