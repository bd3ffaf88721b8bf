"""The gateway benchmark's load generator, run as its own process (httpx, asyncio).

    python -m benchmarks._loadgen URL CONCURRENCY SECONDS [--stream] [--key KEY] [--tokens 64]
        [--cpu-pids PID,PID] [--ramp SECONDS]

`CONCURRENCY` workers send chat completions back to back to `URL` (an OpenAI base URL ending
in /v1) and start no new request after `SECONDS`; with `--ramp`, worker i starts its first
timed request i/CONCURRENCY of the ramp late, so that long streams do not all start (and end)
at the same moment; it prints one JSON line: completed
requests, errors, elapsed seconds (until the last request ended), p50/p99 latency and time to
first token (ms), completion tokens received, the time each worker spent in requests
(`busy_s`: the sum of the latencies over the concurrency), and the CPU seconds each process in
`--cpu-pids` used over the same timed window (the warm-up requests before it not included).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from dataclasses import dataclass, field

import httpx

from benchmarks._servers import cpu_seconds

FIRST_TOKEN = "t0 "  # noqa: S105 (not a secret)
"""The fake engine's first completion token's text."""


@dataclass
class Tally:
    """What the workers measured."""

    latencies: list[float] = field(default_factory=list)
    ttfts: list[float] = field(default_factory=list)
    tokens: int = 0
    errors: int = 0
    first_error: str | None = None


def _pct(values: list[float], q: int) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


async def _one(client: httpx.AsyncClient, url: str, body: dict[str, object], tally: Tally) -> None:
    start = time.perf_counter()
    if not body.get("stream"):
        response = await client.post(url, json=body)
        if response.status_code != 200:
            raise RuntimeError(f"HTTP {response.status_code}: {response.text[:200]}")
        tally.tokens += int(response.json()["usage"]["completion_tokens"])
        elapsed = (time.perf_counter() - start) * 1000
        tally.latencies.append(elapsed)
        tally.ttfts.append(elapsed)
        return
    first: float | None = None
    async with client.stream("POST", url, json=body) as response:
        if response.status_code != 200:
            await response.aread()
            raise RuntimeError(f"HTTP {response.status_code}: {response.text[:200]}")
        async for line in response.aiter_lines():
            if first is None and FIRST_TOKEN in line:
                first = (time.perf_counter() - start) * 1000
            if '"completion_tokens"' in line and line.startswith("data:"):
                usage = json.loads(line[5:]).get("usage")
                if usage:
                    tally.tokens += int(usage["completion_tokens"])
    tally.latencies.append((time.perf_counter() - start) * 1000)
    if first is not None:
        tally.ttfts.append(first)


async def run(
    base: str,
    concurrency: int,
    seconds: float,
    stream: bool,
    key: str | None,
    tokens: int,
    cpu_pids: tuple[int, ...] = (),
    ramp: float = 0.0,
) -> dict[str, object]:
    """Drives the load and summarises it."""
    url = base.rstrip("/") + "/chat/completions"
    body: dict[str, object] = {
        "model": "tiny-llama",
        "messages": [{"role": "user", "content": "Say something about energy."}],
        "max_tokens": tokens,
        "stream": stream,
    }
    if stream:
        body["stream_options"] = {"include_usage": True}
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    tally = Tally()
    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency)
    timeout = httpx.Timeout(60.0)
    async with httpx.AsyncClient(headers=headers, limits=limits, timeout=timeout) as client:
        for _ in range(2):  # warm the connections and both servers' code paths
            await asyncio.gather(*(_one(client, url, body, Tally()) for _ in range(concurrency)))
        cpu_start = {pid: cpu_seconds(pid) for pid in cpu_pids}
        start = time.perf_counter()
        deadline = start + seconds

        async def worker(index: int) -> None:
            await asyncio.sleep(ramp * index / concurrency)
            while time.perf_counter() < deadline:
                try:
                    await _one(client, url, body, tally)
                except (httpx.HTTPError, RuntimeError) as exc:
                    tally.errors += 1
                    tally.first_error = tally.first_error or repr(exc)

        await asyncio.gather(*(worker(i) for i in range(concurrency)))
        elapsed = time.perf_counter() - start
        cpu = {str(pid): cpu_seconds(pid) - cpu_start[pid] for pid in cpu_pids}
    return {
        "requests": len(tally.latencies),
        "errors": tally.errors,
        "first_error": tally.first_error,
        "elapsed_s": elapsed,
        "p50_ms": _pct(tally.latencies, 50),
        "p99_ms": _pct(tally.latencies, 99),
        "ttft_p50_ms": _pct(tally.ttfts, 50),
        "ttft_p99_ms": _pct(tally.ttfts, 99),
        "tokens": tally.tokens,
        "busy_s": sum(tally.latencies) / 1000 / concurrency,
        "cpu_s": cpu,
    }


def main() -> None:
    """Runs the load and prints the summary as one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("url")
    parser.add_argument("concurrency", type=int)
    parser.add_argument("seconds", type=float)
    parser.add_argument("--stream", action="store_true")
    parser.add_argument("--key")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--cpu-pids", default="", help="comma-separated process ids")
    parser.add_argument("--ramp", type=float, default=0.0, help="seconds to stagger starts over")
    args = parser.parse_args()
    pids = tuple(int(pid) for pid in args.cpu_pids.split(",") if pid)
    summary = asyncio.run(
        run(
            args.url,
            args.concurrency,
            args.seconds,
            args.stream,
            args.key,
            args.tokens,
            pids,
            args.ramp,
        )
    )
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
