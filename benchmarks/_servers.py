"""Launchers for the benchmarks: the market and a provider agent, each its own uvicorn process.

    python -m benchmarks._servers market --dir D --port M --agent-port A --agent-seed S
    python -m benchmarks._servers agent --dir D --port A --upstream URL --seed S

The market migrates a SQLite file in `D`, deploys the embedded chain, credits one buyer and
creates its API key, pins the agent's offer in the routing table (nothing is registered
on-chain) and writes `D/market.json` (domain, API key) before it serves. The agent reads the
domain from that file, so start the market first and wait for the file.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tests.support.processes import ServerProcess

REPO = Path(__file__).resolve().parents[1]
MODEL = "tiny-llama"
MODEL_DIGEST = "0x" + "ab" * 32
MARKET_SEED = "0x" + "01" * 32
AGENT_SEED = "0x" + "02" * 32
PROVIDER = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
BUYER = "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC"
DEPOSIT = 10**15


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc/PID/stat (seconds)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    import os

    return ticks / os.sysconf("SC_CLK_TCK")


class Proc(ServerProcess):
    """A server subprocess on a loopback port."""

    @property
    def pid(self) -> int:
        """Its process id."""
        return self.process.pid


def spawn(args: Iterable[str], port: int, health: str, timeout_s: float = 60.0) -> Proc:
    """Starts `python -m ...args` and waits until `health` answers (any status below 500)."""
    process = subprocess.Popen([sys.executable, "-m", *args], cwd=REPO)
    proc = Proc(process, port)
    name = " ".join(args)
    proc.wait_until_up(health, timeout_s, name=name, up=lambda status: status < 500, retry_s=0.1)
    return proc


def _serve_market(args: argparse.Namespace) -> None:
    import uvicorn

    from market.agent_client import AgentClient
    from market.app import create_app
    from market.buyers.service import create_api_key, get_or_create_buyer
    from market.chain.service import open_chain
    from market.config import Settings
    from market.db import create_engine, make_session_factory, migrate, session_scope
    from market.ledger import service as ledger
    from market.routing.table import LiveOffer, RoutingTable
    from market.runtime import AGENT_CONNECTIONS, AGENT_TIMEOUT, Runtime
    from protocol.keys import public_key_hex, signing_key_from_seed

    class PinnedRoutingTable(RoutingTable):
        """A routing table whose pinned offers survive the periodic refresh."""

        def __init__(self, pinned: list[LiveOffer]) -> None:
            self.pinned = pinned
            super().__init__()
            self.replace([])

        def replace(self, offers: Iterable[LiveOffer]) -> None:
            super().replace([*offers, *getattr(self, "pinned", [])])

    var = Path(args.dir)
    url = f"sqlite:///{var}/market.sqlite3"
    migrate(url)
    settings = Settings(database_url=url, var_dir=var, epoch_seconds=86_400)
    chain = open_chain(settings)
    engine = create_engine(url)
    offer = LiveOffer(
        provider=PROVIDER,
        model=MODEL,
        region="DE",
        price_in_per_mtok=1_000,
        price_out_per_mtok=2_000,
        max_concurrency=1_000,
        job_url=f"http://127.0.0.1:{args.agent_port}/jobs",
        public_key=public_key_hex(signing_key_from_seed(args.agent_seed)),
    )
    runtime = Runtime(
        settings=settings,
        sessions=make_session_factory(engine),
        chain=chain,
        ticket_key=signing_key_from_seed(MARKET_SEED),
        routing=PinnedRoutingTable([offer]),
        agents=AgentClient(AGENT_TIMEOUT, limit=AGENT_CONNECTIONS),
    )
    with session_scope(runtime.sessions) as session:
        buyer = get_or_create_buyer(session, BUYER)
        ledger.credit_deposit(session, BUYER, DEPOSIT, "0x" + "cd" * 32, 0)
        key = create_api_key(session, buyer).secret.get_secret_value()
    domain = chain.domain.model_dump(mode="json")
    info = {"domain": domain, "api_key": key, "database": url}
    (var / "market.json").write_text(json.dumps(info))
    uvicorn.run(
        create_app(settings, runtime),
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        access_log=False,
    )


def _serve_agent(args: argparse.Namespace) -> None:
    import uvicorn

    from protocol.keys import public_key_hex, signing_key_from_seed
    from protocol.messages import Domain
    from provider_agent.energy import UnmeasuredMeter
    from provider_agent.jobs import JobsConfig, create_app

    var = Path(args.dir)
    info: dict[str, Any] = json.loads((var / "market.json").read_text())
    data = var / "agent"
    data.mkdir(exist_ok=True)
    config = JobsConfig(
        upstream_url=args.upstream,
        market_public_key=public_key_hex(signing_key_from_seed(MARKET_SEED)),
        domain=Domain.model_validate(info["domain"]),
        provider_address=PROVIDER,
        served_model=MODEL,
        model_digest=MODEL_DIGEST,
        data_dir=data,
    )
    app = create_app(
        config, signing_key_from_seed(args.seed), UnmeasuredMeter("NVML absent (benchmark)")
    )
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


def main() -> None:
    """Serves the market or an agent (see the module doc)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("role", choices=["market", "agent"])
    parser.add_argument("--dir", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--agent-port", type=int)
    parser.add_argument("--agent-seed", default=AGENT_SEED)
    parser.add_argument("--seed", default=AGENT_SEED)
    parser.add_argument("--upstream")
    args = parser.parse_args()
    if args.role == "market":
        _serve_market(args)
    else:
        _serve_agent(args)


if __name__ == "__main__":
    main()
