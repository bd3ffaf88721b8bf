"""Runs every benchmark and prints its table: `python -m benchmarks [--quick]`.

Order: gateway, receipts, epoch, storage, receipt_status, market_energy (which reuses the
gateway's CPU figures at concurrency 8), then the routing decision benchmark. `--quick` runs
each in a few seconds (CI); without it the whole set takes a few minutes.
"""

from __future__ import annotations

import argparse
import time

from benchmarks import epoch, gateway, market_energy, receipt_status, receipts, routing, storage


def main() -> None:
    """Runs them one after another (never at once: each measures CPU or wall time)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="short runs (CI)")
    args = parser.parse_args()
    flags = ["--quick"] if args.quick else []
    started = time.monotonic()
    heads = gateway.main(flags)
    receipts.main(flags)
    epoch.main(flags)
    storage.main(flags)
    receipt_status.main(flags)
    cpu = {
        mode: {
            "market": heads["cases"][f"{mode}_c8"]["market"]["market_cpu_ms"],
            "agent": heads["cases"][f"{mode}_c8"]["market"]["agent_cpu_ms"],
        }
        for mode in ("plain", "stream")
    }
    market_energy.main(flags, cpu=cpu)
    if not args.quick:
        print("\n== routing: decision time ==")
        routing.main()
    print(f"\nall benchmarks: {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
