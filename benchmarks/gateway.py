"""Gateway overhead: the market and a provider agent in front of a fake engine, vs the engine.

    python -m benchmarks.gateway [--quick]

Four processes on loopback: the fake OpenAI engine (`tests.support.openai_upstream`, standing
in for vLLM), a real provider agent (`provider_agent.jobs`), the market (SQLite, embedded
chain, one funded buyer, the agent's offer pinned in routing; `benchmarks._servers`), and the
load generator (`benchmarks._loadgen`, httpx). Each case is run twice in the same session:
straight at the engine (the baseline) and through market -> agent -> engine, plain and
streaming, 64 output tokens, at concurrency 1, 8 and 32.

CPU per request is each server process's utime+stime (/proc/PID/stat) over the timed part of
the case (the load generator reads it after its warm-up requests and after the last timed
request), less what it burns idle over the same time (the embedded market polls the chain
every 2 s), divided by the requests completed in that part. The engine's own CPU per request (`eng
ms/rq`, a bare ASGI app under uvicorn that answers from memory) is the same-run baseline:
what one uvicorn server spends per request on this machine, at that concurrency. A last
case paces the engine (a
token every 20 ms) at concurrency 32 and compares the tokens per second the buyer receives
through the market with those received directly. Its workers' first requests are spread over
one stream's length (`--ramp`), as buyers' requests arrive, rather than all 32 at the same
instant, which would queue 32 ticket-and-hold transactions in the market at once and again
at every round, since paced streams all last as long. The rate is the closed loop's steady rate,
tokens over the time the workers spent in requests (`busy_s`), so that it reflects what the
relay adds to each stream: over the wall time until the last request ended, a run of a few
1.3 s streams per worker counted the workers that were idle at the end, waiting for the
deadline's last streams, and swung by 15-20 points between runs.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks._servers import REPO, Proc, cpu_seconds, spawn
from market.demo.ports import free_port
from tests.support.openai_upstream import UpstreamProcess, start_upstream

TOKENS = 64
PACE_MS = 20
"""The paced case's engine: one token every 20 ms."""
TARGET_PLAIN_MS = 3.5
TARGET_STREAM_MS = 20.0
TARGET_ADDED_P50_MS = 5.0
TARGET_PACED_SHARE = 0.95


@dataclass
class Stack:
    """The running processes of one benchmark session."""

    upstream: UpstreamProcess
    market: Proc
    agent: Proc
    api_key: str
    idle_market: float
    idle_agent: float
    """CPU seconds per second each burns with no load."""

    @property
    def market_url(self) -> str:
        """The market's OpenAI base URL."""
        return f"http://127.0.0.1:{self.market.port}/v1"

    def stop(self) -> None:
        """Stops everything."""
        for proc in (self.market, self.agent):
            proc.stop()
        self.upstream.stop()


def start_stack(var: Path, idle_s: float) -> Stack:
    """Starts engine, market and agent; measures the idle CPU of market and agent."""
    upstream = start_upstream()
    market_port, agent_port = free_port(), free_port()
    market = spawn(
        [
            "benchmarks._servers",
            "market",
            "--dir",
            str(var),
            "--port",
            str(market_port),
            "--agent-port",
            str(agent_port),
        ],
        market_port,
        f"http://127.0.0.1:{market_port}/health",
        timeout_s=120,
    )
    info: dict[str, Any] = json.loads((var / "market.json").read_text())
    agent = spawn(
        [
            "benchmarks._servers",
            "agent",
            "--dir",
            str(var),
            "--port",
            str(agent_port),
            "--upstream",
            upstream.url,
        ],
        agent_port,
        f"http://127.0.0.1:{agent_port}/",
    )
    time.sleep(1.0)
    m0, a0, t0 = cpu_seconds(market.pid), cpu_seconds(agent.pid), time.monotonic()
    time.sleep(idle_s)
    elapsed = time.monotonic() - t0
    idle_m = (cpu_seconds(market.pid) - m0) / elapsed
    idle_a = (cpu_seconds(agent.pid) - a0) / elapsed
    return Stack(upstream, market, agent, str(info["api_key"]), idle_m, idle_a)


def load(
    url: str,
    concurrency: int,
    seconds: float,
    stream: bool,
    key: str | None,
    cpu_pids: tuple[int, ...] = (),
    ramp: float = 0.0,
) -> Any:
    """Runs the load generator process and returns its summary."""
    command = [sys.executable, "-m", "benchmarks._loadgen", url, str(concurrency), str(seconds)]
    command += ["--tokens", str(TOKENS), "--cpu-pids", ",".join(map(str, cpu_pids))]
    command += ["--ramp", str(ramp)]
    if stream:
        command.append("--stream")
    if key:
        command += ["--key", key]
    out = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def measured(
    stack: Stack,
    url: str,
    conc: int,
    secs: float,
    stream: bool,
    key: str | None,
    ramp: float = 0.0,
) -> Any:
    """One case, with the market's and the agent's CPU per request (idle subtracted)."""
    pids = (stack.market.pid, stack.agent.pid, stack.upstream.process.pid)
    summary = load(url, conc, secs, stream, key, pids, ramp)
    wall = float(summary["elapsed_s"])
    n = max(1, int(summary["requests"]))
    used = [float(summary["cpu_s"][str(pid)]) for pid in pids]
    market = used[0] - stack.idle_market * wall
    agent = used[1] - stack.idle_agent * wall
    summary["market_cpu_ms"] = max(0.0, market) * 1000 / n
    summary["agent_cpu_ms"] = max(0.0, agent) * 1000 / n
    summary["engine_cpu_ms"] = used[2] * 1000 / n
    summary["rps"] = summary["requests"] / summary["elapsed_s"]
    if summary["errors"]:
        print(f"  ! {summary['errors']} errors, first: {summary['first_error']}", file=sys.stderr)
    return summary


def verdict(ok: bool) -> str:
    """MET or MISSED."""
    return "MET" if ok else "MISSED"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Runs every case and prints the tables; returns the headline figures."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="short cases (CI)")
    args = parser.parse_args(argv)
    secs = 0.6 if args.quick else 4.0
    levels = (1, 8) if args.quick else (1, 8, 32)
    with tempfile.TemporaryDirectory(prefix="bench-gateway-") as tmp:
        stack = start_stack(Path(tmp), 1.0 if args.quick else 4.0)
        try:
            return _run(stack, secs, levels, args.quick)
        finally:
            stack.stop()


def _run(stack: Stack, secs: float, levels: tuple[int, ...], quick: bool) -> dict[str, Any]:
    stack.upstream.control(completion_tokens=TOKENS)
    print("\n== gateway: market -> agent -> fake engine vs the engine directly ==")
    print(
        f"idle CPU: market {stack.idle_market * 1000:.1f} ms/s, agent "
        f"{stack.idle_agent * 1000:.1f} ms/s (subtracted); {TOKENS} output tokens; "
        f"{secs:g} s per case"
    )
    header = (
        f"{'mode':<7}{'c':>3} {'path':<7}{'req/s':>8}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'ttft50':>8}{'ttft99':>8}{'eng ms/rq':>10}{'+p50 ms':>9}{'mkt ms/rq':>10}"
        f"{'agt ms/rq':>10}{'sum':>7}{'target':>8}"
    )
    print(header)
    print("-" * len(header))
    heads: dict[str, Any] = {}
    for stream in (False, True):
        mode = "stream" if stream else "plain"
        target = TARGET_STREAM_MS if stream else TARGET_PLAIN_MS
        for conc in levels:
            direct = measured(stack, stack.upstream.url, conc, secs, stream, None)
            via = measured(stack, stack.market_url, conc, secs, stream, stack.api_key)
            added = via["p50_ms"] - direct["p50_ms"]
            cpu = via["market_cpu_ms"] + via["agent_cpu_ms"]
            heads[f"{mode}_c{conc}"] = {"direct": direct, "market": via, "added_p50_ms": added}
            for path, row in (("direct", direct), ("market", via)):
                line = (
                    f"{mode:<7}{conc:>3} {path:<7}{row['rps']:>8.1f}{row['p50_ms']:>9.2f}"
                    f"{row['p99_ms']:>9.2f}{row['ttft_p50_ms']:>8.2f}{row['ttft_p99_ms']:>8.2f}"
                    f"{row['engine_cpu_ms']:>10.2f}"
                )
                if path == "market":
                    line += (
                        f"{added:>9.2f}{row['market_cpu_ms']:>10.2f}{row['agent_cpu_ms']:>10.2f}"
                        f"{cpu:>7.2f}{'<=' + format(target, 'g'):>8}"
                    )
                print(line)
    # Paced engine: a token every 20 ms; what share of the direct token rate does the relay keep?
    stack.upstream.control(completion_tokens=TOKENS, delay_ms=PACE_MS)
    paced_secs = 2.5 if quick else 5.0
    conc = 32
    ramp = TOKENS * PACE_MS / 1000  # starts spread over one stream's length, as buyers arrive
    direct = measured(stack, stack.upstream.url, conc, paced_secs, True, None, ramp)
    via = measured(stack, stack.market_url, conc, paced_secs, True, stack.api_key, ramp)
    stack.upstream.control(completion_tokens=TOKENS)
    d_tps = direct["tokens"] / direct["busy_s"]
    v_tps = via["tokens"] / via["busy_s"]
    share = v_tps / d_tps if d_tps else float("nan")
    print(f"\npaced engine ({PACE_MS} ms/token, {TOKENS} tokens, c={conc}, {paced_secs:g} s):")
    print(f"{'path':<8}{'tokens/s':>10}{'p50 ms':>9}{'ttft50':>8}{'ttft99':>8}")
    for path, row, tps in (("direct", direct, d_tps), ("market", via, v_tps)):
        print(
            f"{path:<8}{tps:>10.0f}{row['p50_ms']:>9.1f}{row['ttft_p50_ms']:>8.1f}"
            f"{row['ttft_p99_ms']:>8.1f}"
        )
    plain = max(
        heads[f"plain_c{c}"]["market"]["market_cpu_ms"]
        + heads[f"plain_c{c}"]["market"]["agent_cpu_ms"]
        for c in levels
    )
    streamed = max(
        heads[f"stream_c{c}"]["market"]["market_cpu_ms"]
        + heads[f"stream_c{c}"]["market"]["agent_cpu_ms"]
        for c in levels
    )
    added_c1 = heads["plain_c1"]["added_p50_ms"]
    print("\ntargets (worst case over the concurrency levels):")
    print(
        f"  market+agent CPU per plain request  {plain:6.2f} ms  <= {TARGET_PLAIN_MS} ms   "
        f"{verdict(plain <= TARGET_PLAIN_MS)}"
    )
    print(
        f"  market+agent CPU per 64-tok stream  {streamed:6.2f} ms  <= {TARGET_STREAM_MS} ms  "
        f"{verdict(streamed <= TARGET_STREAM_MS)}"
    )
    print(
        f"  added p50 latency, plain, c=1       {added_c1:6.2f} ms  <= {TARGET_ADDED_P50_MS} ms   "
        f"{verdict(added_c1 <= TARGET_ADDED_P50_MS)}"
    )
    print(
        f"  paced relay tokens/s vs direct      {share * 100:6.1f} %   >= 95 %    "
        f"{verdict(share >= TARGET_PACED_SHARE)}"
    )
    market_plain = max(heads[f"plain_c{c}"]["market"]["market_cpu_ms"] for c in levels)
    return {"market_cpu_ms_plain": market_plain, "cases": heads, "paced_share": share}


if __name__ == "__main__":
    main()
