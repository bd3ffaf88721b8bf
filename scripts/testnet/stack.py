"""The local testnet on loopback, without Docker: the same services as docker-compose.yml.

PostgreSQL (initdb as the postgres user), Redis, anvil, the deployer (`market chain deploy`),
`market db upgrade`, the market API, Celery worker and beat, vLLM's CPU build serving the tiny
test model, and provider agents (keystore, gas money and network tokens from the deployer,
`provider-agent register`, `provider-agent run`). Each process runs in its own session with
its log under `STATE/logs/` and its pid in `STATE/state.json`; `down` stops them all.

    .venv/bin/python scripts/testnet/stack.py up|down|status [--state-dir .testnet]

scripts/testnet.sh wraps this; tests/e2e builds a `Stack` on free ports.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # run as a script: make `tests.*` and `scripts.*` importable
    sys.path.insert(0, str(REPO))

from market.demo.ports import bindable, free_port  # noqa: E402
from market.demo.vllm_server import (  # noqa: E402
    SERVER_ENV,
    ensure_tiny_model,
    require_vllm_python,
    serve_argv,
)
from provider_agent.engine.digest import weights_digest  # noqa: E402
from scripts.testnet import provision  # noqa: E402
from tests.support import postgres  # noqa: E402

VENV_BIN = Path(sys.executable).parent
ANVIL = REPO / "contracts" / "node_modules" / ".bin" / "anvil"
SERVED_MODEL = "tiny-llama"
PASSPHRASE = "testnet-only-passphrase"  # noqa: S105 - a throwaway testnet keystore
SHUTDOWN_ORDER = ("agent", "vllm", "beat", "worker", "market", "anvil", "redis")


class StackError(RuntimeError):
    """A service did not start or did not become healthy; the message has its log's tail."""


@dataclass
class Ports:
    """Every port the testnet listens on (all on 127.0.0.1)."""

    redis: int = 56379
    anvil: int = 58545
    market: int = 58000
    vllm: list[int] = field(default_factory=lambda: [58101, 58102])
    agent: list[int] = field(default_factory=lambda: [58201, 58202])

    @classmethod
    def free(cls, providers: int) -> Ports:
        """Ports the OS picks, for tests running beside anything."""
        return cls(
            redis=free_port(),
            anvil=free_port(),
            market=free_port(),
            vllm=[free_port() for _ in range(providers)],
            agent=[free_port() for _ in range(providers)],
        )


@dataclass
class Options:
    """What a testnet is made of; the defaults are scripts/testnet.sh's."""

    providers: int = 1
    agents_at_start: int | None = None  # how many agents `up` starts (default: all)
    epoch_seconds: int = 600
    confirmations: int = 2
    block_time_s: int = 1
    heartbeat_timeout_s: int = 15
    orphaned_job_after_s: int = 60
    price_in_per_mtok: int = 200_000  # 0.20 tUSD per million input tokens
    price_out_per_mtok: int = 600_000  # 0.60 tUSD per million output tokens
    fee_bps: int = 500


@dataclass
class Provider:
    """One provider agent and its vLLM."""

    index: int
    data_dir: Path
    agent_url: str
    vllm_url: str
    address: str = ""
    public_key: str = ""


@dataclass
class Service:
    """A process the stack started."""

    name: str
    pid: int
    log: str
    argv0: str


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"<no log: {exc}>"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError):  # a zombie is dead
        if Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z"):
            return False
    return True


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


class Stack:
    """A testnet under `state_dir`: start it with `up`, stop it with `down`."""

    def __init__(
        self, state_dir: Path, ports: Ports | None = None, options: Options | None = None
    ) -> None:
        """Nothing starts until `up`."""
        self.state_dir = state_dir.resolve()
        self.options = options or Options()
        self.ports = ports or Ports()
        self.logs = self.state_dir / "logs"
        self.keys = self.state_dir / "keys"
        self.deployment_file = self.state_dir / "deployment.json"
        self.model_dir = self.state_dir / "models" / SERVED_MODEL
        self.services: dict[str, Service] = {}
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.postgres: dict[str, Any] = {}
        self.providers: list[Provider] = []
        self.model_digest = ""
        self.market_public_key = ""

    # -- where things are -----------------------------------------------------------------

    @property
    def market_url(self) -> str:
        """The market API."""
        return f"http://127.0.0.1:{self.ports.market}"

    @property
    def rpc_url(self) -> str:
        """anvil's JSON-RPC."""
        return f"http://127.0.0.1:{self.ports.anvil}"

    @property
    def redis_url(self) -> str:
        """The Celery broker."""
        return f"redis://127.0.0.1:{self.ports.redis}/0"

    @property
    def database_url(self) -> str:
        """The market's database."""
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.postgres['port']}/market"

    def market_env(self) -> dict[str, str]:
        """The environment of every `market` process (as the compose file's x-market-env)."""
        o = self.options
        return {
            **os.environ,
            "MARKET_DATABASE_URL": self.database_url,
            "MARKET_BROKER_URL": self.redis_url,
            "MARKET_CHAIN_RPC_URL": self.rpc_url,
            "MARKET_DEPLOYMENT_FILE": str(self.deployment_file),
            "MARKET_CONFIRMATIONS": str(o.confirmations),
            "MARKET_EPOCH_SECONDS": str(o.epoch_seconds),
            "MARKET_PROTOCOL_FEE_BPS": str(o.fee_bps),
            "MARKET_HEARTBEAT_TIMEOUT_S": str(o.heartbeat_timeout_s),
            "MARKET_ORPHANED_JOB_AFTER_S": str(o.orphaned_job_after_s),
            "MARKET_TICKET_KEY_FILE": str(self.keys / "ticket.key"),
            "MARKET_OPERATOR_KEY_FILE": str(self.keys / "operator.key"),
            "MARKET_HOST": "127.0.0.1",
            "MARKET_PORT": str(self.ports.market),
            "MARKET_VAR_DIR": str(self.state_dir / "var"),
        }

    def agent_env(self, provider: Provider) -> dict[str, str]:
        """The environment of one provider agent (AGENT_* with nested `__` names)."""
        o = self.options
        env = {k: v for k, v in os.environ.items() if not k.startswith("AGENT_")}
        env.update(
            {
                "AGENT_DATA_DIR": str(provider.data_dir),
                "AGENT_PASSPHRASE": PASSPHRASE,
                "AGENT_MARKET_URL": self.market_url,
                "AGENT_CHAIN_RPC_URL": self.rpc_url,
                "AGENT_DEPLOYMENT_FILE": str(self.deployment_file),
                "AGENT_VLLM__URL": provider.vllm_url,
                "AGENT_VLLM__SERVED_MODEL": SERVED_MODEL,
                "AGENT_VLLM__MODEL_DIGEST": self.model_digest,
                "AGENT_OFFER__PRICE_IN_PER_MTOK": str(o.price_in_per_mtok),
                "AGENT_OFFER__PRICE_OUT_PER_MTOK": str(o.price_out_per_mtok),
                "AGENT_OFFER__PUBLIC_URL": provider.agent_url,
                "AGENT_OFFER__MAX_CONCURRENCY": "8",
                "AGENT_LISTEN__HOST": "127.0.0.1",
                "AGENT_LISTEN__PORT": provider.agent_url.rsplit(":", 1)[1],
                "AGENT_RUN__HEARTBEAT_INTERVAL_S": "2",
                "AGENT_RUN__ATTESTATION_WINDOW_S": "5",
                "AGENT_RUN__RECEIPT_SYNC_INTERVAL_S": "2",
                "AGENT_RUN__SHUTDOWN_GRACE_S": "5",
            }
        )
        if self.market_public_key:
            env["AGENT_MARKET_PUBLIC_KEY"] = self.market_public_key
        return env

    # -- processes ------------------------------------------------------------------------

    def spawn(
        self, name: str, argv: list[str], env: Mapping[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """Starts `argv` in its own session, output to `logs/NAME.log`, and records it."""
        self.logs.mkdir(parents=True, exist_ok=True)
        log = self.logs / f"{name}.log"
        with log.open("ab") as out:
            out.write(f"$ {' '.join(argv)}\n".encode())
            out.flush()
            process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else None,
                cwd=REPO,
                start_new_session=True,
            )
        self.processes[name] = process
        self.services[name] = Service(name, process.pid, str(log), Path(argv[0]).name)
        self.save()
        return process

    def run(
        self, name: str, argv: list[str], env: Mapping[str, str] | None = None, timeout: float = 300
    ) -> str:
        """Runs a one-shot command to completion (output appended to `logs/NAME.log`)."""
        self.logs.mkdir(parents=True, exist_ok=True)
        log = self.logs / f"{name}.log"
        result = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            env=dict(env) if env is not None else None,
            cwd=REPO,
            timeout=timeout,
            check=False,
        )
        with log.open("a") as out:
            out.write(f"$ {' '.join(argv)}\n{result.stdout}{result.stderr}")
        if result.returncode != 0:
            raise StackError(
                f"{name}: `{' '.join(argv)}` exited with {result.returncode}:\n"
                f"{(result.stdout + result.stderr)[-4000:]}"
            )
        return result.stdout

    def wait_for(
        self, name: str, check: Callable[[], bool], timeout: float, what: str = "healthy"
    ) -> float:
        """Polls `check` until it is true; `StackError` with the log's tail if the process
        dies or the deadline passes. Returns the seconds it took."""
        started = time.monotonic()
        while True:
            process = self.processes.get(name)
            if process is not None and process.poll() is not None:
                raise StackError(
                    f"{name} exited with {process.returncode} before it was {what}; "
                    f"{self.logs / (name + '.log')}:\n{_tail(self.logs / (name + '.log'))}"
                )
            with contextlib.suppress(httpx.HTTPError, OSError, ValueError, KeyError):
                if check():
                    return time.monotonic() - started
            if time.monotonic() - started > timeout:
                raise StackError(
                    f"{name} was not {what} within {timeout:.0f} s; "
                    f"{self.logs / (name + '.log')}:\n{_tail(self.logs / (name + '.log'))}"
                )
            time.sleep(0.25)

    def stop(self, name: str, timeout: float = 30.0) -> None:
        """SIGTERM the service's process group, SIGKILL after `timeout` seconds."""
        service = self.services.get(name)
        if service is None:
            return
        process = self.processes.get(name)
        if process is None and service.argv0 not in _cmdline(service.pid):
            self.services.pop(name)  # gone, and the pid may now be someone else's
            self.save()
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(service.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process is not None and process.poll() is not None:
                break
            if process is None and not _alive(service.pid):
                break
            time.sleep(0.1)
        else:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(service.pid, signal.SIGKILL)
            if process is not None:
                process.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError, PermissionError):  # stragglers
            os.killpg(service.pid, signal.SIGKILL)
        self.services.pop(name)
        self.processes.pop(name, None)
        self.save()

    # -- state ----------------------------------------------------------------------------

    def save(self) -> None:
        """Writes `state.json`: ports, services, postgres, providers."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        state = {
            "ports": asdict(self.ports),
            "options": asdict(self.options),
            "services": {name: asdict(s) for name, s in self.services.items()},
            "postgres": self.postgres,
            "providers": [{**asdict(p), "data_dir": str(p.data_dir)} for p in self.providers],
            "model_digest": self.model_digest,
            "market_public_key": self.market_public_key,
        }
        (self.state_dir / "state.json").write_text(json.dumps(state, indent=2) + "\n")

    @classmethod
    def load(cls, state_dir: Path) -> Stack:
        """The stack recorded under `state_dir` (to stop it or show it)."""
        state = json.loads((state_dir / "state.json").read_text())
        stack = cls(state_dir, Ports(**state["ports"]), Options(**state["options"]))
        stack.services = {name: Service(**s) for name, s in state["services"].items()}
        stack.postgres = state["postgres"]
        stack.providers = [
            Provider(**{**p, "data_dir": Path(p["data_dir"])}) for p in state["providers"]
        ]
        stack.model_digest = state["model_digest"]
        stack.market_public_key = state["market_public_key"]
        return stack

    # -- up -------------------------------------------------------------------------------

    def up(self, say: Callable[[str], None] = print) -> None:
        """Starts everything in order, each step waiting for the last to be healthy."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        (self.state_dir / ".gitignore").write_text("*\n")
        started = time.monotonic()
        ports = [self.ports.redis, self.ports.anvil, self.ports.market]
        busy = [p for p in [*ports, *self.ports.vllm, *self.ports.agent] if not bindable(p)]
        if busy:
            raise StackError(f"ports already in use: {busy} (a testnet still up? `down` first)")
        try:
            self._up(say)
        except BaseException:
            say("start-up failed: stopping what was started")
            self.down(say=lambda _: None)
            raise
        say(f"testnet up in {time.monotonic() - started:.1f} s")

    def _up(self, say: Callable[[str], None]) -> None:
        o = self.options
        say("tiny model (market/demo/tiny_model.py)")
        ensure_tiny_model(self.model_dir)
        self.model_digest = weights_digest(self.model_dir)
        self.providers = [
            Provider(
                index=i,
                data_dir=self.state_dir / "agents" / f"provider-{i}",
                agent_url=f"http://127.0.0.1:{self.ports.agent[i - 1]}",
                vllm_url=f"http://127.0.0.1:{self.ports.vllm[i - 1]}",
            )
            for i in range(1, o.providers + 1)
        ]
        for provider in self.providers:  # vLLM is the slowest: start it first
            self.start_vllm(provider)

        say("postgres")
        cluster = postgres.start_cluster()
        self.postgres = {
            "root": str(cluster.root),
            "port": cluster.port,
            "bindir": str(cluster.bindir),
            "as_postgres_user": cluster.as_postgres_user,
        }
        self.save()
        import sqlalchemy as sa

        engine = sa.create_engine(cluster.url, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
        with engine.connect() as conn:
            conn.execute(sa.text("CREATE DATABASE market"))
        engine.dispose()

        say("redis")
        self.spawn(
            "redis",
            [
                shutil.which("redis-server") or "redis-server",
                "--port", str(self.ports.redis), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no", "--dir", str(self.state_dir),
            ],
        )  # fmt: skip
        self.wait_for("redis", self._redis_ping, 15)

        say("anvil")
        anvil = str(ANVIL) if ANVIL.exists() else (shutil.which("anvil") or "anvil")
        self.spawn(
            "anvil",
            [
                anvil, "--host", "127.0.0.1", "--port", str(self.ports.anvil),
                "--hardfork", "prague", "--block-time", str(o.block_time_s),
            ],
        )  # fmt: skip
        self.wait_for("anvil", self._anvil_up, 30)

        say("deployer: keys, gas money, `market chain deploy`, operator role")
        provision.init_keys(self.keys)
        provision.fund_operators(self.rpc_url, self.keys)
        env = self.market_env()
        env["MARKET_DEPLOYER_KEY"] = (self.keys / "deployer.key").read_text().strip()
        self.run(
            "deployer",
            [str(VENV_BIN / "market"), "chain", "deploy", "--rpc-url", self.rpc_url,
             "--out", str(self.deployment_file)],
            env,
        )  # fmt: skip
        provision.grant_operator(self.rpc_url, self.deployment_file, self.keys)

        say("market db upgrade")
        self.run("migrate", [str(VENV_BIN / "market"), "db", "upgrade"], self.market_env())

        say("market API, worker, beat")
        self.start_market()
        self.spawn(
            "worker", [str(VENV_BIN / "market"), "worker", "--concurrency", "1"], self.market_env()
        )
        self.spawn(
            "beat",
            [str(VENV_BIN / "market"), "beat", "--schedule", str(self.state_dir / "beat-schedule")],
            self.market_env(),
        )
        self.wait_for_market()
        self.market_public_key = provision.market_key(self.market_url)
        self.save()

        count = len(self.providers) if o.agents_at_start is None else o.agents_at_start
        for provider in self.providers[:count]:
            say(f"provider {provider.index}: keystore, funds, register")
            self.provision_provider(provider)
        for provider in self.providers:
            say(f"provider {provider.index}: waiting for vLLM ({provider.vllm_url})")
            self.wait_for(f"vllm-{provider.index}", self._healthy(provider.vllm_url), 300)
        for provider in self.providers[:count]:
            self.start_agent(provider)
        for provider in self.providers[:count]:
            self.wait_for_online(provider)

    def start_market(self) -> None:
        """Starts the market API (`market serve`)."""
        self.spawn("market", [str(VENV_BIN / "market"), "serve"], self.market_env())

    def wait_for_market(self) -> None:
        """Waits until the market API answers its health check."""
        self.wait_for("market", self._market_healthy, 60)

    def start_vllm(self, provider: Provider) -> None:
        """vLLM's CPU build serving the tiny model, as market/demo/vllm_server.py runs it."""
        port = int(provider.vllm_url.rsplit(":", 1)[1])
        argv = serve_argv(require_vllm_python(), self.model_dir, SERVED_MODEL, port)
        self.spawn(f"vllm-{provider.index}", argv, {**os.environ, **SERVER_ENV})

    def provision_provider(self, provider: Provider) -> None:
        """`provider-agent init` (fast KDF), funds from the deployer, `provider-agent register`."""
        agent = str(VENV_BIN / "provider-agent")
        env = self.agent_env(provider)
        name = f"agent-{provider.index}"
        keystore = provider.data_dir / "keystore.json"
        if not keystore.exists():
            self.run(name, [agent, "init", "--kdf-cost", "fast"], env)
        document = json.loads(keystore.read_text())
        provider.address, provider.public_key = document["address"], document["public_key"]
        self.save()
        provision.fund_provider(self.rpc_url, self.deployment_file, self.keys, provider.address)
        self.run(name, [agent, "register"], env)

    def start_agent(self, provider: Provider) -> None:
        """`provider-agent run`, attached to its vLLM; waits for its job endpoint."""
        name = f"agent-{provider.index}"
        self.spawn(name, [str(VENV_BIN / "provider-agent"), "run"], self.agent_env(provider))
        self.wait_for(name, self._agent_ready(provider), 120, "serving jobs")

    def wait_for_online(self, provider: Provider, timeout: float = 60) -> None:
        """Until the market lists the provider as online (registered and heartbeating)."""

        def online() -> bool:
            response = httpx.get(f"{self.market_url}/providers/{provider.address}", timeout=5)
            return response.status_code == 200 and bool(response.json().get("online"))

        self.wait_for(f"agent-{provider.index}", online, timeout, "online at the market")

    # -- health checks --------------------------------------------------------------------

    def _redis_ping(self) -> bool:
        with socket.create_connection(("127.0.0.1", self.ports.redis), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")

    def _anvil_up(self) -> bool:
        body = {"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []}
        return httpx.post(self.rpc_url, json=body, timeout=1).status_code == 200

    def _market_healthy(self) -> bool:
        return httpx.get(f"{self.market_url}/health", timeout=5).status_code == 200

    @staticmethod
    def _healthy(url: str) -> Callable[[], bool]:
        return lambda: httpx.get(f"{url}/health", timeout=5).status_code == 200

    @staticmethod
    def _agent_ready(provider: Provider) -> Callable[[], bool]:
        def ready() -> bool:
            response = httpx.get(f"{provider.agent_url}/agent/status", timeout=5)
            return response.status_code == 200 and response.json()["engine"]["state"] == "healthy"

        return ready

    # -- down and status ------------------------------------------------------------------

    def down(self, say: Callable[[str], None] = print) -> None:
        """Stops every service (agents first, anvil and Redis last), then PostgreSQL."""
        for prefix in SHUTDOWN_ORDER:
            for name in [n for n in self.services if n.split("-")[0] == prefix]:
                say(f"stopping {name}")
                self.stop(name)
        for name in list(self.services):
            say(f"stopping {name}")
            self.stop(name)
        if self.postgres:
            say("stopping postgres")
            postgres.PostgresCluster(
                Path(self.postgres["root"]),
                int(self.postgres["port"]),
                Path(self.postgres["bindir"]),
                bool(self.postgres["as_postgres_user"]),
            ).stop()
            self.postgres = {}
        self.save()

    def status(self) -> list[tuple[str, str, str]]:
        """(service, state, detail) for every recorded service."""
        rows = []
        for name, service in self.services.items():
            process = self.processes.get(name)
            if process is not None:
                up = process.poll() is None
            else:
                up = _alive(service.pid) and service.argv0 in _cmdline(service.pid)
            rows.append((name, "up" if up else "DOWN", f"pid {service.pid}, log {service.log}"))
        if self.postgres:
            try:
                with socket.create_connection(("127.0.0.1", self.postgres["port"]), timeout=1):
                    state = "up"
            except OSError:
                state = "DOWN"
            rows.append(("postgres", state, f"port {self.postgres['port']}"))
        return rows

    def summary(self) -> str:
        """URLs and the next step, for a person."""
        lines = [
            f"market API     {self.market_url}  (GET /health, /market, /providers, /v1/models)",
            f"chain (anvil)  {self.rpc_url}  deployment {self.deployment_file}",
            f"redis          {self.redis_url}",
        ]
        if self.postgres:
            lines.append(f"postgres       {self.database_url}")
        lines += [
            f"provider {p.index}     agent {p.agent_url}  vLLM {p.vllm_url}  address {p.address}"
            for p in self.providers
        ]
        lines += [
            f"logs           {self.logs}/",
            "",
            "next: a buyer deposits test tUSD (faucet + deposit on the Settlement contract),",
            "      creates an API key with a signed request, then uses any OpenAI client with",
            f"      base_url={self.market_url}/v1 and model={SERVED_MODEL!r};",
            "      tests/e2e/test_full_loop.py does exactly that. Stop: scripts/testnet.sh down",
        ]
        return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """`up`, `down` or `status` of the testnet under `--state-dir`."""
    parser = argparse.ArgumentParser(description="The local testnet without Docker.")
    parser.add_argument("command", choices=["up", "down", "status"])
    parser.add_argument("--state-dir", type=Path, default=REPO / ".testnet")
    parser.add_argument("--providers", type=int, default=1)
    parser.add_argument("--epoch-seconds", type=int, default=600)
    args = parser.parse_args(argv)
    state_dir: Path = args.state_dir
    recorded = (state_dir / "state.json").exists()
    if args.command == "up":
        if recorded and Stack.load(state_dir).services:
            print(f"a testnet is recorded in {state_dir}: run `down` first", file=sys.stderr)
            return 1
        stack = Stack(
            state_dir,
            options=Options(providers=args.providers, epoch_seconds=args.epoch_seconds),
        )
        try:
            stack.up()
        except StackError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(stack.summary())
        return 0
    if not recorded:
        print(f"no testnet recorded in {state_dir}", file=sys.stderr)
        return 0 if args.command == "down" else 1
    stack = Stack.load(state_dir)
    if args.command == "down":
        stack.down()
        print("testnet down")
        return 0
    rows = stack.status()
    for name, state, detail in rows:
        print(f"{name:<10} {state:<5} {detail}")
    if not rows:
        print("testnet down")
        return 1
    healthy = all(state == "up" for _, state, _ in rows)
    if healthy:
        print()
        print(stack.summary())
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
