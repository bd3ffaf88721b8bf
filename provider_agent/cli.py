"""`provider-agent`: what a GPU owner runs beside vLLM."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from pathlib import Path
from typing import Annotated, NoReturn

import httpx
import typer
from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeRemainingColumn
from rich.table import Table

from protocol.chain.deploy import Deployment
from protocol.chain.errors import ChainError
from protocol.chain.settlement import SettlementClient
from protocol.errors import KeystoreError
from protocol.keys import (
    PRODUCTION_KDF,
    TEST_KDF,
    ProviderIdentity,
    commit_rotation,
    create_keystore,
    load_keystore,
    stage_rotation,
    staged_keystore_path,
)
from protocol.messages import Domain
from provider_agent.attestations import AttestationLog
from provider_agent.calibrate import (
    CalibrationError,
    CalibrationPlan,
    LevelResult,
    calibration_message,
    load_calibration,
    run_calibration,
    save_calibration,
    served_model_name,
    sign_calibration,
)
from provider_agent.config import AgentSettings, ConfigError, ListenSettings, load_settings
from provider_agent.doctor import Check, failed, run_doctor
from provider_agent.energy import (
    EnergyMeter,
    meter_config,
    select_meter,
    window_energy,
)
from provider_agent.jobs.outbox import ReceiptOutbox
from provider_agent.onchain import ChainSetupError, network_tokens, open_settlement, payment_tokens
from provider_agent.pricing import PricingError, suggest, with_resolved_prices
from provider_agent.provisioning import (
    bind_key,
    register_with_market,
    rotate_bound_key,
    stake_to,
)
from provider_agent.status_access import bearer_header
from provider_agent.supervisor import engine_environment

app = typer.Typer(
    help="The provider agent: serve jobs beside vLLM, meter energy, sign receipts.",
    no_args_is_help=True,
)
console = Console()
errors = Console(stderr=True)
HTTP_TIMEOUT_S = 5.0
STATUS_STYLE = {"pass": "green", "warn": "yellow", "fail": "bold red", "skip": "dim"}


class KdfCost(StrEnum):
    """How hard the keystore's passphrase KDFs work."""

    production = "production"
    fast = "fast"


KdfCostOption = Annotated[
    KdfCost,
    typer.Option(
        "--kdf-cost",
        help="Passphrase KDF cost. `fast` is for tests and CI only: it is cheap to brute-force.",
    ),
]


def fail(message: str, fix: str | None = None, code: int = 1) -> NoReturn:
    """Print an error (and its fix) to stderr and exit with `code`."""
    errors.print(f"[bold red]error:[/] {escape(message)}")
    if fix:
        errors.print(f"[yellow]fix:[/] {escape(fix)}")
    raise typer.Exit(code)


def _settings(ctx: typer.Context) -> AgentSettings:
    try:
        return load_settings(ctx.obj)
    except ConfigError as exc:
        fail(str(exc), code=2)


def _passphrase(settings: AgentSettings, *, confirm: bool = False) -> str:
    if settings.passphrase is not None:
        return settings.passphrase.get_secret_value()
    text: str = typer.prompt("Keystore passphrase", hide_input=True, confirmation_prompt=confirm)
    return text


def _identity(settings: AgentSettings) -> ProviderIdentity:
    path = settings.keystore_path
    if not path.exists():
        fail(f"no keystore at {path}", "run `provider-agent init`")
    try:
        return load_keystore(path, _passphrase(settings))
    except KeystoreError as exc:
        fail(str(exc), "check AGENT_PASSPHRASE (or what you typed at the prompt)")


def _engine_environ(settings: AgentSettings) -> Mapping[str, str]:
    """The environment vLLM runs with: the one the agent gives it when it starts it, else
    (attached to a running vLLM) the agent's own, which should match it."""
    return engine_environment(os.environ) if settings.vllm.command else os.environ


def _meter(settings: AgentSettings) -> EnergyMeter:
    environ = _engine_environ(settings)
    config = meter_config(settings.energy.gpus, settings.offer.declared_power_w, environ)
    return select_meter(config)


@app.callback()
def main(
    ctx: typer.Context,
    config: Path | None = typer.Option(
        None,
        "--config",
        "-c",
        envvar="AGENT_CONFIG_FILE",
        help="TOML config file; AGENT_* environment variables override it.",
    ),
) -> None:
    """Provider agent commands."""
    ctx.obj = config


@app.command()
def init(ctx: typer.Context, kdf_cost: KdfCostOption = KdfCost.production) -> None:
    """Create the encrypted keystore: an Ed25519 identity and an EVM account."""
    settings = _settings(ctx)
    path = settings.keystore_path
    if path.exists():
        fail(f"{path} exists; refusing to overwrite a keystore", "move it away to start afresh")
    passphrase = _passphrase(settings, confirm=True)
    cost = TEST_KDF if kdf_cost is KdfCost.fast else PRODUCTION_KDF
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        identity = create_keystore(path, passphrase, kdf_cost=cost)
    except KeystoreError as exc:
        fail(str(exc))
    except OSError as exc:  # a read-only or full disk
        fail(
            f"cannot write the keystore {path}: {exc}",
            "set data_dir (AGENT_DATA_DIR) or keystore (AGENT_KEYSTORE) to a writable place"
            " with free space",
        )
    body = (
        f"keystore    {path}\npublic key  {identity.public_key_hex}\naddress     {identity.address}"
    )
    console.print(Panel(body, title="provider identity created", expand=False))
    console.print("Next: fund the address with gas money, then `provider-agent register`.")


@app.command()
def doctor(ctx: typer.Context) -> None:
    """Check everything the agent needs; exit 1 if anything fails."""
    settings = _settings(ctx)
    passphrase = None
    if settings.keystore_path.exists():
        passphrase = _passphrase(settings)
    with httpx.Client(timeout=HTTP_TIMEOUT_S) as http:
        checks = run_doctor(settings, passphrase, http, _meter(settings), _engine_environ(settings))
    console.print(_checks_table(checks))
    if failed(checks):
        raise typer.Exit(1)


def _checks_table(checks: list[Check]) -> Table:
    table = Table(title="provider-agent doctor")
    for column in ("check", "status", "detail", "fix"):
        table.add_column(column, overflow="fold")
    for check in checks:
        style = STATUS_STYLE[check.status]
        status = f"[{style}]{check.status}[/]"
        table.add_row(check.name, status, escape(check.detail), escape(check.fix or ""))
    return table


@app.command()
def register(
    ctx: typer.Context,
    stake: int | None = typer.Option(
        None,
        "--stake",
        min=1,
        help="Total stake to reach, in network-token base units (default: the contract's minimum).",
    ),
) -> None:
    """Bind the Ed25519 key on-chain, stake, and register with the market."""
    settings = _settings(ctx)
    try:
        rpc_url, deployment_file = settings.require_chain()
    except ConfigError as exc:
        fail(str(exc), code=2)
    if settings.market_url is not None:
        try:  # the market refuses "auto": resolve it before any transaction is sent
            with_resolved_prices(settings)
        except PricingError as exc:
            fail(str(exc), "run `provider-agent calibrate`, or set the offer's prices by hand")
    identity = _identity(settings)
    try:
        client = open_settlement(rpc_url, deployment_file)
    except ChainSetupError as exc:
        fail(str(exc), "check chain_rpc_url and deployment_file")
    try:
        with console.status("binding the key on-chain") as status:
            console.print(bind_key(client, identity))
            status.update("staking network tokens")
            console.print(stake_to(client, identity, stake))
    except (ChainSetupError, ChainError) as exc:
        fail(str(exc))
    if settings.market_url is None:
        console.print("market_url not set: skipped registering with the market")
        return
    with httpx.Client(timeout=HTTP_TIMEOUT_S) as http:
        ok, message = register_with_market(http, settings, identity, client.deployment)
    if not ok:
        fail(message, "check market_url, then run `provider-agent register` again")
    console.print(message)


@app.command("rotate-key")
def rotate_key(ctx: typer.Context, kdf_cost: KdfCostOption = KdfCost.production) -> None:
    """Replace the Ed25519 key (one that leaked, or routine hygiene), keeping the EVM account.

    Stop the agent first. The new key is staged beside the keystore, bound on-chain in place of
    the old one (the market voids the old key when it sees that), then put in place of the
    keystore, and the agent registers again with the market. Run it again if it was
    interrupted: it finishes the staged rotation."""
    settings = _settings(ctx)
    try:
        rpc_url, deployment_file = settings.require_chain()
    except ConfigError as exc:
        fail(str(exc), code=2)
    listen = settings.listen
    if _listening(listen.host, listen.port):
        fail(
            f"something answers on {listen.host}:{listen.port}, the agent's job endpoint",
            "stop the agent (it signs with the key being replaced), rotate, then start it again",
        )
    path = settings.keystore_path
    if not path.exists():
        fail(f"no keystore at {path}", "run `provider-agent init`")
    cost = TEST_KDF if kdf_cost is KdfCost.fast else PRODUCTION_KDF
    try:
        current, staged = stage_rotation(path, _passphrase(settings), kdf_cost=cost)
    except KeystoreError as exc:
        fail(str(exc), "check AGENT_PASSPHRASE (or what you typed at the prompt)")
    again = f"the new key is staged in {staged_keystore_path(path)}: run this again"
    try:
        client = open_settlement(rpc_url, deployment_file)
        with console.status("binding the new key on-chain"):
            console.print(rotate_bound_key(client, current, staged))
        commit_rotation(path)
    except ChainSetupError as exc:  # says itself what to do
        fail(str(exc))
    except (ChainError, KeystoreError) as exc:
        fail(str(exc), again)
    body = f"keystore    {path}\naddress     {current.address}\n"
    body += f"old key     {current.public_key_hex} (void)\nnew key     {staged.public_key_hex}"
    console.print(Panel(body, title="Ed25519 key rotated", expand=False))
    if settings.market_url is not None:
        with httpx.Client(timeout=HTTP_TIMEOUT_S) as http:
            ok, message = register_with_market(http, settings, staged, client.deployment)
        if not ok:
            fail(message, "the rotation is done: `provider-agent run` registers at start")
        console.print(message)
    console.print("Start the agent again (`provider-agent run`): it signs with the new key.")


def _local(host: str) -> str:
    """Where this machine reaches a server bound to `host` (a wildcard host: loopback)."""
    return "127.0.0.1" if host in ("0.0.0.0", "") else "::1" if host == "::" else host  # noqa: S104


def _listening(host: str, port: int) -> bool:
    """Whether a TCP server accepts connections on host:port (a wildcard host: on loopback)."""
    try:
        with socket.create_connection((_local(host), port), timeout=1.0):
            return True
    except OSError:
        return False


@app.command()
def status(ctx: typer.Context) -> None:
    """Show identity, stake, earnings, meter, the running agent and vLLM health: whatever is
    reachable."""
    settings = _settings(ctx)
    table = Table(title="provider-agent status", show_header=False)
    table.add_column("item")
    table.add_column("value", overflow="fold")
    address = _keystore_rows(table, settings.keystore_path)
    _chain_rows(table, settings, address)
    info = _meter(settings).describe()
    reason = f" ({info.reason})" if info.reason else ""
    table.add_row("energy meter", escape(f"{info.kind}: {info.method}{reason}"))
    for item, summary in (("receipts", _receipts_summary), ("attestations", _attestations_summary)):
        try:
            table.add_row(item, escape(summary(settings.data_dir)))
        except OSError as exc:  # a file of the data dir that cannot be read
            table.add_row(item, _unavailable(f"cannot read {exc.filename}: {exc.strerror}"))
    with httpx.Client(timeout=HTTP_TIMEOUT_S) as http:
        table.add_row("agent", _agent_summary(http, settings.listen))
        table.add_row("vLLM", _health(http, settings.vllm.url))
        if settings.market_url is None:
            table.add_row("market", _unavailable("market_url not set"))
        else:
            table.add_row("market", _health(http, settings.market_url))
    console.print(table)


def _receipts_summary(data_dir: Path) -> str:
    """The outbox as the receipt sync left it (`provider_agent.receipt_sync`)."""
    if not data_dir.is_dir():
        return "none signed yet"
    outbox = ReceiptOutbox(data_dir)
    unanswered = outbox.count_unsent()
    unpaid = 0
    if outbox.unpaid_path.exists():
        unpaid = sum(1 for line in outbox.unpaid_path.read_bytes().splitlines() if line.strip())
    return (
        f"{unanswered} not yet answered by the market, {unpaid} it will not pay"
        f" (listed with the reason in {outbox.unpaid_path})"
    )


def _attestations_summary(data_dir: Path) -> str:
    """The chain's head, the queue, and how many the market refused for good."""
    if not data_dir.is_dir():
        return "none signed yet"
    store = AttestationLog(data_dir)
    head = store.head()
    summary = f"head seq {'none' if head is None else head.seq}, {len(store.unsent())} unsent"
    if not store.refused_path.exists():
        return summary
    refused = sum(1 for line in store.refused_path.read_bytes().splitlines() if line.strip())
    return f"{summary}, {refused} refused by the market (listed in {store.refused_path})"


def _agent_summary(http: httpx.Client, listen: ListenSettings) -> str:
    """What a running `provider-agent run` says of itself (`GET /agent/status`)."""
    target = _local(listen.host)
    url = f"http://{f'[{target}]' if ':' in target else target}:{listen.port}/agent/status"
    try:
        response = http.get(url, headers=bearer_header(listen.status_token))
    except httpx.HTTPError:
        return _unavailable(f"not running (nothing answers at {url})")
    if response.status_code == 401:
        return _unavailable(f"{url} answered 401: listen.status_token is not the agent's")
    if response.status_code != 200:
        return _unavailable(f"{url} answered {response.status_code}")
    status = response.json()
    registration, jobs = status["registration"], status["jobs"]
    if registration["registered"]:
        registered = f"registered (context length {registration['context_length']})"
    else:
        registered = f"not registered ({registration['last_error'] or 'not yet'})"
    in_flight = f"{jobs['in_flight']} of {jobs['max_concurrency']} jobs in flight"
    served = jobs["served"]
    receipts = sum(n for methods in served["receipts"].values() for n in methods.values())
    energy = ", ".join(
        f"{mj / 1e6:.3f} kJ {method}" for method, mj in served["energy_millijoules"].items()
    )
    line = (
        f"{'healthy' if status['healthy'] else 'unhealthy'}: engine {status['engine']['state']},"
        f" {registered}, {in_flight}; served since start: receipts {receipts}, tokens"
        f" {served['prompt_tokens']} prompt + {served['completion_tokens']} completion,"
        f" energy {energy or 'not measured'}"
    )
    return escape(line) if status["healthy"] else f"[yellow]{escape(line)}[/]"


def _unavailable(reason: str) -> str:
    return f"[yellow]unavailable:[/] {escape(reason)}"


def _keystore_rows(table: Table, path: Path) -> str | None:
    """Address and key from the keystore's clear fields (no passphrase needed)."""
    try:
        document = json.loads(path.read_text())
        address, public_key = str(document["address"]), str(document["public_key"])
    except FileNotFoundError:
        table.add_row("keystore", _unavailable(f"no keystore at {path}: run `provider-agent init`"))
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        table.add_row("keystore", _unavailable(f"{path} unreadable: {exc}"))
        return None
    table.add_row("keystore", str(path))
    table.add_row("address", address)
    table.add_row("public key", public_key)
    return address


def _chain_rows(table: Table, settings: AgentSettings, address: str | None) -> None:
    try:
        rpc_url, deployment_file = settings.require_chain()
        client: SettlementClient = open_settlement(rpc_url, deployment_file)
    except (ConfigError, ChainSetupError) as exc:
        table.add_row("chain", _unavailable(str(exc)))
        return
    table.add_row("chain", f"chain {client.deployment.chain_id} via {rpc_url}")
    if address is None:
        table.add_row("stake", _unavailable("no keystore"))
        return
    try:
        bound = client.provider_key(address)
        table.add_row("key on-chain", "not bound" if bound == bytes(32) else "0x" + bound.hex())
        table.add_row("stake", network_tokens(client.stake_of(address)))
        table.add_row("active", "yes" if client.is_active_provider(address) else "no")
        table.add_row("earnings", payment_tokens(client.earnings(address)))
    except ChainError as exc:
        table.add_row("on-chain state", _unavailable(str(exc)))


def _health(http: httpx.Client, url: str) -> str:
    try:
        response = http.get(f"{url}/health")
    except httpx.HTTPError as exc:
        return _unavailable(f"{url} unreachable: {exc}")
    if response.status_code != 200:
        return _unavailable(f"{url}/health answered {response.status_code}")
    return f"[green]healthy[/] ({escape(url)})"


@app.command()
def meter(
    ctx: typer.Context,
    interval: float = typer.Option(1.0, "--interval", min=0.05, help="Seconds between readings."),
) -> None:
    """Describe the energy meter and show the energy between two readings."""
    settings = _settings(ctx)
    selected = _meter(settings)
    info = selected.describe()
    lines = [f"kind      {info.kind}", f"method    {info.method}"]
    if info.driver_version:
        lines.append(f"driver    {info.driver_version}")
    lines += [f"gpu       {gpu.name} {gpu.uuid} limit {gpu.power_limit_mw} mW" for gpu in info.gpus]
    if info.reason:
        lines.append(f"reason    {info.reason}")
    console.print(Panel(escape("\n".join(lines)), title="energy meter", expand=False))
    start = selected.read()
    time.sleep(interval)
    end = selected.read()
    window = window_energy(start, end)
    console.print(f"window    {window.duration_ns / 1e9:.3f} s")
    if window.total_mj is None:
        why = window.invalid_reason or window.basis
        console.print(escape(f"energy    unmeasured: {why}"))
        return
    console.print(f"energy    {window.total_mj} mJ ({window.method}: {escape(window.basis)})")
    console.print(f"power     {window.avg_power_mw} mW average")


@app.command("model-digest")
def model_digest(
    model: Path = typer.Argument(
        ..., help="The served model's directory (its *.safetensors) or its one weights file"
    ),
) -> None:
    """Print the served weights' digest: the value for AGENT_VLLM__MODEL_DIGEST.

    SHA-256 over each weight file's name, size and bytes (docs/protocol.md, "Receipt").
    """
    from provider_agent.engine.digest import weights_digest

    try:
        console.print(weights_digest(model), highlight=False)
    except OSError as exc:
        fail(str(exc), "pass the directory vLLM loads the model from, or the weights file")


@app.command()
def run(ctx: typer.Context) -> None:
    """Supervise vLLM, serve jobs, send heartbeats and attestations until SIGTERM/SIGINT."""
    import asyncio
    import logging

    from provider_agent.runner import ListenError, run_agent
    from provider_agent.supervisor import EngineStartError

    settings = _settings(ctx)
    identity = _identity(settings)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    selected = _meter(settings)
    try:
        code = asyncio.run(run_agent(settings, identity, selected))
    except ConfigError as exc:
        fail(str(exc), code=2)
    except EngineStartError as exc:
        fail(str(exc), "check vllm.command, vllm.url and data_dir/vllm.log")
    except ListenError as exc:
        fail(str(exc), "stop what listens there, or set listen.host / listen.port")
    finally:
        selected.close()
    raise typer.Exit(code)


def _levels(text: str) -> tuple[int, ...]:
    try:
        levels = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        fail(f"--concurrency takes comma-separated integers, got {text!r}", code=2)
    if not levels or min(levels) < 1:
        fail(f"--concurrency takes positive integers, got {text!r}", code=2)
    return levels


def _domain(settings: AgentSettings) -> Domain:
    """The signing domain: the deployment file's, else the market's `GET /market`."""
    if settings.deployment_file is not None:
        try:
            deployment = Deployment.load(settings.deployment_file)
            return Domain(chain_id=deployment.chain_id, settlement_contract=deployment.settlement)
        except (OSError, ValueError, TypeError) as exc:
            fail(f"cannot read the deployment file {settings.deployment_file}: {exc}", code=2)
    if settings.market_url is not None:
        url = f"{settings.market_url}/market"
        try:
            with httpx.Client(timeout=HTTP_TIMEOUT_S) as http:
                body = http.get(url).raise_for_status().json()
            return Domain(
                chain_id=body["chain_id"], settlement_contract=body["settlement_contract"]
            )
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            fail(f"cannot read the market's domain from {url}: {exc}")
    fail(
        "a calibration is signed for one chain and Settlement contract, and none is known",
        "set deployment_file (AGENT_DEPLOYMENT_FILE) or market_url (AGENT_MARKET_URL)",
        code=2,
    )


async def _calibrate_all(
    settings: AgentSettings, selected: EnergyMeter, plan: CalibrationPlan, progress: Progress
) -> tuple[str, list[LevelResult]]:
    tasks: dict[int, TaskID] = {}

    def report(concurrency: int, elapsed: float, total: float, phase: str) -> None:
        task = tasks.get(concurrency)
        if task is None:
            return
        if phase == "drain":
            progress.update(task, description=f"concurrency {concurrency:>4}: draining")
            return
        progress.update(
            task,
            completed=elapsed,
            total=total,
            description=f"concurrency {concurrency:>4}: {phase}",
        )

    timeout = httpx.Timeout(plan.request_timeout_s, connect=HTTP_TIMEOUT_S)
    limits = httpx.Limits(max_connections=max(plan.concurrency) + 8)
    async with httpx.AsyncClient(
        base_url=settings.vllm.url, timeout=timeout, limits=limits
    ) as http:
        model = await served_model_name(http, settings.vllm.served_model)
        for level in plan.concurrency:
            tasks[level] = progress.add_task(
                f"concurrency {level:>4}: waiting", total=plan.warmup_s + plan.duration_s
            )
        results = await run_calibration(http, selected, model, plan, report)
        for level, task in tasks.items():
            done = f"concurrency {level:>4}: done"
            progress.update(task, completed=plan.warmup_s + plan.duration_s, description=done)
    return model, results


def _watts(milliwatts: int | None) -> str:
    return "-" if milliwatts is None else f"{Decimal(milliwatts) / 1000:.1f} W"


def _calibration_table(results: list[LevelResult]) -> Table:
    table = Table(title="calibration (steady-state window)")
    for column in ("concurrency", "output tok/s", "J/token", "avg power", "running", "requests"):
        table.add_column(column, justify="right")
    for level in results:
        jpt = level.joules_per_token
        energy = f"{jpt} ({level.method})" if jpt is not None else "[yellow]unmeasured[/]"
        power = level.window.avg_power_mw if level.window.valid else None
        requests = f"{level.requests_completed} ok"
        if level.requests_failed:
            requests += f", [red]{level.requests_failed} failed[/]"
        table.add_row(
            str(level.concurrency),
            str(level.tokens_per_s),
            energy,
            _watts(power),
            str(level.avg_running),
            requests,
        )
    return table


@app.command()
def calibrate(
    ctx: typer.Context,
    concurrency: str = typer.Option(
        "1,4,16,64", "--concurrency", help="Comma-separated numbers of requests kept in flight."
    ),
    duration: float = typer.Option(20.0, "--duration", min=0.1, help="Window seconds per level."),
    warmup: float = typer.Option(5.0, "--warmup", min=0.0, help="Seconds before the window."),
    max_tokens: int = typer.Option(128, "--max-tokens", min=1, help="Output tokens per request."),
) -> None:
    """Measure tokens/s and J/token at fixed concurrency; sign and save the result."""
    settings = _settings(ctx)
    plan = CalibrationPlan(
        concurrency=_levels(concurrency),
        duration_s=duration,
        warmup_s=warmup,
        max_tokens=max_tokens,
    )
    identity = _identity(settings)
    domain = _domain(settings)
    selected = _meter(settings)
    info = selected.describe()
    if info.method == "unmeasured":
        reason = f": {info.reason}" if info.reason else ""
        console.print(escape(f"[energy meter unmeasured{reason}] J/token will be unmeasured"))
    columns = (TextColumn("{task.description}"), BarColumn(), TimeRemainingColumn())
    try:
        with Progress(*columns, console=console) as progress:
            model, results = asyncio.run(_calibrate_all(settings, selected, plan, progress))
    except CalibrationError as exc:
        fail(str(exc), "check that vLLM answers at vllm.url and serves vllm.served_model")
    finally:
        selected.close()
    console.print(_calibration_table(results))
    now_ms = time.time_ns() // 1_000_000
    message = calibration_message(
        identity, domain, model, settings.vllm.model_digest, info, plan, results, now_ms
    )
    envelope = sign_calibration(identity, message)
    path = save_calibration(settings.data_dir, envelope)
    console.print(f"signed calibration saved to {escape(str(path))}")
    if settings.market_url is None:
        console.print("market_url not set: the calibration was not sent to a market")
        return
    url = f"{settings.market_url}/providers/calibration"
    try:
        with httpx.Client(timeout=HTTP_TIMEOUT_S) as http:
            response = http.post(url, json=envelope)
    except httpx.HTTPError as exc:
        fail(f"market unreachable at {url}: {exc}", "the calibration is saved; post it later")
    if response.status_code == 404:
        console.print(f"the market does not take calibrations yet (404 at {escape(url)})")
    elif response.is_success:
        console.print(f"calibration sent to the market at {escape(settings.market_url)}")
    else:
        fail(f"the market refused the calibration ({response.status_code}): {response.text}")


price_app = typer.Typer(help="Prices: the energy floor behind `auto`.", no_args_is_help=True)
app.add_typer(price_app, name="price")


@price_app.command("suggest")
def price_suggest(
    ctx: typer.Context,
    margin: str | None = typer.Option(
        None, "--margin", help="Margin over the energy cost, e.g. 0.2 (default offer.auto_margin)."
    ),
) -> None:
    """The minimum profitable price per million tokens, from the latest calibration."""
    settings = _settings(ctx)
    margin_value: Decimal | None = None
    if margin is not None:
        try:
            margin_value = Decimal(margin)
        except InvalidOperation:
            fail(f"--margin takes a decimal number, got {margin!r}", code=2)
    try:
        calibration = load_calibration(settings.data_dir)
    except CalibrationError as exc:
        fail(str(exc), "run `provider-agent calibrate` again")
    if calibration is None:
        fail(f"no calibration in {settings.data_dir}", "run `provider-agent calibrate` first")
    try:
        floor = suggest(settings, calibration, margin_value)
    except PricingError as exc:
        fail(str(exc))
    table = Table(title="price floor per million tokens")
    for column in ("factor", "value", "origin"):
        table.add_column(column, overflow="fold")
    for factor in floor.factors:
        table.add_row(escape(factor.name), escape(factor.value), escape(factor.origin))
    console.print(table)
    console.print(f"price_out_per_mtok >= {floor.price_out_per_mtok}")
    console.print(f"price_in_per_mtok  >= {floor.price_in_per_mtok}")
