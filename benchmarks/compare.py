"""This checkout against another revision, on the gateway's cases, interleaved.

    python -m benchmarks.compare REV [--rounds 5] [--seconds 2] [--concurrency 1 8] [--stream]

On a shared VM the same case read twice a few minutes apart differs by 20-50 %, more than
most changes to the request path are worth, so a change is judged against the code before
it in the same minutes: REV is checked out in a temporary git worktree, both checkouts start
their gateway stack (`benchmarks.gateway.start_stack`: fake engine, agent, market; REV needs
it and `measured`), and each round runs every case on both, alternating which goes first.
The table gives each side's median over the rounds of the market's and the agent's CPU per
request and the p50 latency, the change in the sum, and in how many rounds this checkout
used less CPU than REV. Both stacks use this checkout's virtual environment.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

REPO = Path(__file__).resolve().parents[1]

# Runs in each checkout (its own `benchmarks` package: the working directory comes first on
# `sys.path` under `-c`): start the stack, then measure one case per line read.
WORKER = """
import json, sys, tempfile
from pathlib import Path
from benchmarks.gateway import TOKENS, measured, start_stack
stack = start_stack(Path(tempfile.mkdtemp(prefix="bench-compare-")), 2.0)
try:
    stack.upstream.control(completion_tokens=TOKENS)
    measured(stack, stack.market_url, 4, 1.0, False, stack.api_key)
    print("ready", flush=True)
    for line in sys.stdin:
        conc, secs, stream = line.split()
        url, key = stack.market_url, stack.api_key
        row = measured(stack, url, int(conc), float(secs), stream == "1", key)
        keys = ("market_cpu_ms", "agent_cpu_ms", "p50_ms", "requests")
        print(json.dumps({key: row[key] for key in keys}), flush=True)
finally:
    stack.stop()
"""


class Side:
    """One checkout's stack, driven over its worker's stdin and stdout."""

    def __init__(self, name: str, root: Path) -> None:
        self.name = name
        command = [sys.executable, "-c", WORKER]
        self.process = subprocess.Popen(
            command, cwd=root, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        self.rows: dict[tuple[int, bool], list[dict[str, float]]] = {}

    def _pipes(self) -> tuple[IO[str], IO[str]]:
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        return self.process.stdin, self.process.stdout

    def wait_ready(self) -> None:
        """Blocks until the stack is up and warm."""
        _, out = self._pipes()
        for line in out:
            if line.strip() == "ready":
                return
        raise RuntimeError(f"{self.name}: the stack did not start")

    def measure(self, conc: int, secs: float, stream: bool) -> dict[str, float]:
        """One case; its row is kept for the summary."""
        into, out = self._pipes()
        into.write(f"{conc} {secs} {int(stream)}\n")
        into.flush()
        row: dict[str, float] = json.loads(out.readline())
        self.rows.setdefault((conc, stream), []).append(row)
        return row

    def stop(self) -> None:
        """Ends the worker, which stops its stack."""
        into, _ = self._pipes()
        into.close()
        self.process.wait(timeout=60)


@contextmanager
def worktree(rev: str) -> Iterator[Path]:
    """REV checked out (detached) in a temporary directory, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="bench-rev-") as tmp:
        path = Path(tmp) / "checkout"
        git = ["git", "-C", str(REPO), "worktree"]
        subprocess.run([*git, "add", "--detach", str(path), rev], check=True, capture_output=True)
        try:
            yield path
        finally:
            subprocess.run([*git, "remove", "--force", str(path)], check=False)


def _median(rows: list[dict[str, float]], *keys: str) -> float:
    return statistics.median(sum(row[key] for key in keys) for row in rows)


def summary(this: Side, other: Side) -> list[str]:
    """The table's lines."""
    head = f"{'case':<12}{'side':<10}{'mkt ms/rq':>10}{'agt ms/rq':>10}{'sum':>8}{'p50 ms':>8}"
    lines = [head + f"{'change':>9}{'less CPU':>10}", "-" * 77]
    for conc, stream in this.rows:
        case = f"{'stream' if stream else 'plain'} c={conc}"
        ours, theirs = this.rows[conc, stream], other.rows[conc, stream]
        both = ("market_cpu_ms", "agent_cpu_ms")
        change = _median(ours, *both) / _median(theirs, *both) - 1
        wins = sum(
            a["market_cpu_ms"] + a["agent_cpu_ms"] < b["market_cpu_ms"] + b["agent_cpu_ms"]
            for a, b in zip(ours, theirs, strict=True)
        )
        for side, rows in ((this, ours), (other, theirs)):
            figures = (
                f"{_median(rows, 'market_cpu_ms'):>10.2f}{_median(rows, 'agent_cpu_ms'):>10.2f}"
                f"{_median(rows, *both):>8.2f}{_median(rows, 'p50_ms'):>8.2f}"
            )
            tail = f"{change * 100:>+8.1f}%{wins:>6}/{len(ours)}" if side is this else ""
            lines.append(f"{case:<12}{side.name:<10}{figures}{tail}")
    return lines


def main(argv: list[str] | None = None) -> Any:
    """Runs the interleaved rounds and prints the table; returns it as lines."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("rev", help="the revision to compare with (e.g. HEAD~1, main)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=2.0, help="per case and side")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--stream", action="store_true", help="streams too (64 tokens)")
    args = parser.parse_args(argv)
    modes = [False, True] if args.stream else [False]
    with worktree(args.rev) as path:
        this, other = Side("this", REPO), Side(args.rev[:9], path)
        try:
            for side in (this, other):
                side.wait_ready()
            print(f"\n== compare: this checkout vs {args.rev}, {args.rounds} interleaved rounds ==")
            for round_ in range(args.rounds):
                order = (this, other) if round_ % 2 == 0 else (other, this)
                for conc in args.concurrency:
                    for stream in modes:
                        for side in order:
                            side.measure(conc, args.seconds, stream)
                print(f"round {round_ + 1}/{args.rounds} done", flush=True)
        finally:
            for side in (this, other):
                side.stop()
    lines = summary(this, other)
    print("\n".join(lines))
    return lines


if __name__ == "__main__":
    main()
