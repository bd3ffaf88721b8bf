"""Throughput of the real vLLM serving the tiny model, at a few concurrencies.

    .venv/bin/python tests/engine/bench_vllm.py [--model-dir DIR] [--concurrency 1 8 64]
    .venv/bin/python tests/engine/bench_vllm.py --base-url http://127.0.0.1:8000 ...

Without --base-url it builds the tiny model (if needed) and starts its own server,
reporting the time to /health and the server's peak resident memory. Each round sends
`concurrency` x `--rounds` completions with ignore_eos, so every request generates
exactly --max-tokens tokens, and checks that vllm:generation_tokens_total moved by
the completion tokens the responses reported.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from market.demo.vllm_server import ensure_tiny_model, start_vllm

SERVED_NAME = "tiny-llama"


def generation_tokens(base_url: str, served_name: str) -> float:
    text = httpx.get(f"{base_url}/metrics", timeout=30).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("vllm:generation_tokens_total{") and served_name in line
    )


async def one_round(
    base_url: str, served_name: str, concurrency: int, requests: int, max_tokens: int
) -> dict[str, Any]:
    # No keep-alive: a pooled connection that uvicorn closes after its 5 s idle timeout
    # just as the client reuses it fails with httpx.ReadError; loopback connects are cheap.
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=base_url, timeout=600, limits=limits) as client:
        semaphore = asyncio.Semaphore(concurrency)
        latencies: list[float] = []

        async def request(i: int) -> int:
            async with semaphore:
                started = time.perf_counter()
                response = await client.post(
                    "/v1/completions",
                    json={
                        "model": served_name,
                        "prompt": f"Benchmark request {i}: the quick brown fox",
                        "max_tokens": max_tokens,
                        "temperature": 0.7,
                        "seed": i,
                        "ignore_eos": True,
                    },
                )
                response.raise_for_status()
                latencies.append(time.perf_counter() - started)
                tokens: int = response.json()["usage"]["completion_tokens"]
                return tokens

        before = generation_tokens(base_url, served_name)
        started = time.perf_counter()
        counts = await asyncio.gather(*(request(i) for i in range(requests)))
        wall = time.perf_counter() - started
        await asyncio.sleep(0.5)
        delta = generation_tokens(base_url, served_name) - before
    total = sum(counts)
    latencies.sort()
    return {
        "concurrency": concurrency,
        "requests": requests,
        "max_tokens": max_tokens,
        "completion_tokens": total,
        "metrics_delta": delta,
        "metrics_match": delta == total,
        "wall_s": round(wall, 2),
        "output_tokens_per_s": round(total / wall, 1),
        "p50_latency_s": round(latencies[len(latencies) // 2], 2),
    }


def run(base_url: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    # Warm up once so the first round does not pay for first-request costs.
    asyncio.run(one_round(base_url, args.served_name, 1, 1, 4))
    results = []
    for concurrency in args.concurrency:
        result = asyncio.run(
            one_round(
                base_url,
                args.served_name,
                concurrency,
                concurrency * args.rounds,
                args.max_tokens,
            )
        )
        print(json.dumps(result), flush=True)
        results.append(result)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--base-url", help="an already running server")
    parser.add_argument("--model-dir", help="tiny model directory (built if missing)")
    parser.add_argument("--served-name", default=SERVED_NAME)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--rounds", type=int, default=2, help="requests per slot")
    parser.add_argument("--max-tokens", type=int, default=128)
    args = parser.parse_args(argv)
    if args.base_url:
        run(args.base_url, args)
        return 0
    model_dir = Path(args.model_dir or Path(tempfile.gettempdir()) / "tiny-llama")
    started = time.perf_counter()
    ensure_tiny_model(model_dir)
    print(json.dumps({"model_ready_s": round(time.perf_counter() - started, 2)}), flush=True)
    with start_vllm(model_dir, args.served_name) as server:
        print(
            json.dumps(
                {
                    "startup_to_health_s": round(server.startup_seconds, 1),
                    "rss_after_start_gib": round(server.peak_rss_bytes() / 2**30, 2),
                }
            ),
            flush=True,
        )
        run(server.base_url, args)
        print(json.dumps({"peak_rss_gib": round(server.peak_rss_bytes() / 2**30, 2)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
