"""The market's own energy per request, next to the GPU energy of the request it routes.

    python -m benchmarks.market_energy [--quick] [--watts-per-core 10]

CPU time per request of the market process (and of the provider agent) is measured anew with
the gateway benchmark's stack (`benchmarks.gateway`: market -> agent -> fake engine, plain and
streaming, 64 output tokens, concurrency 8, idle CPU subtracted), or taken from a gateway run
when `benchmarks` runs everything. It is turned into joules at an assumed power per busy core:
10 W by default, a deliberately high figure (a 2024 server CPU at full load draws about
3.5-6.5 W per core: AMD EPYC 9654, 360 W TDP / 96 cores = 3.75 W; Intel Xeon Platinum 8480+,
350 W / 56 cores = 6.25 W; the rest covers memory and platform share).

The GPU side is ML.ENERGY's measured J/token for Llama-3.1-8B-Instruct on one H100 at
max_num_seqs 64 (lm-arena-chat), from `market/energy` data (the reference the carbon routing
benchmark uses), times 64 output tokens.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.carbon_routing import reference_jpt
from benchmarks.gateway import TOKENS, measured, start_stack

TARGET_SHARE = 0.001


def measure_cpu(quick: bool) -> dict[str, dict[str, float]]:
    """Market and agent CPU ms per request, plain and streaming, at concurrency 8."""
    secs = 0.6 if quick else 3.0
    out: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-energy-") as tmp:
        stack = start_stack(Path(tmp), 1.0 if quick else 3.0)
        try:
            stack.upstream.control(completion_tokens=TOKENS)
            for stream in (False, True):
                row = measured(stack, stack.market_url, 8, secs, stream, stack.api_key)
                out["stream" if stream else "plain"] = {
                    "market": row["market_cpu_ms"],
                    "agent": row["agent_cpu_ms"],
                }
        finally:
            stack.stop()
    return out


def main(argv: list[str] | None = None, cpu: dict[str, dict[str, float]] | None = None) -> Any:
    """Prints the table; `cpu` reuses a gateway run's figures instead of measuring."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="short measurement (CI)")
    parser.add_argument("--watts-per-core", type=float, default=10.0)
    args = parser.parse_args(argv)
    source = "from the gateway run above" if cpu else "measured now, concurrency 8"
    cpu = cpu or measure_cpu(args.quick)
    jpt = float(reference_jpt())
    gpu_j = jpt * TOKENS
    watts = args.watts_per_core
    print("\n== market energy: the market's CPU joules vs the GPU joules of the request ==")
    print(
        f"GPU: {jpt} J/token (ML.ENERGY, Llama-3.1-8B-Instruct, H100, batch 64) x {TOKENS} "
        f"tokens = {gpu_j:.2f} J per request; CPU at {watts:g} W per busy core; CPU {source}"
    )
    print(f"{'request':<8}{'process':<15}{'CPU ms':>8}{'CPU J':>9}{'share of GPU J':>16}  target")
    shares = {}
    for mode, row in cpu.items():
        for who, ms in (("market", row["market"]), ("market+agent", row["market"] + row["agent"])):
            joules = ms / 1000 * watts
            share = joules / gpu_j
            shares[f"{mode}/{who}"] = share
            verdict = ""
            if who == "market":
                verdict = "< 0.1 % " + ("MET" if share < TARGET_SHARE else "MISSED")
            print(f"{mode:<8}{who:<15}{ms:>8.2f}{joules:>9.4f}{share * 100:>15.3f}%  {verdict}")
    budget_ms = TARGET_SHARE * gpu_j / watts * 1000
    print(f"(0.1 % of the GPU joules is {budget_ms:.2f} ms of CPU per request at {watts:g} W/core)")
    return shares


if __name__ == "__main__":
    main()
