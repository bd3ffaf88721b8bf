#!/usr/bin/env python3
"""Check the real NVML energy meter on a GPU machine.

Reads every GPU's total-energy counter over an idle phase and, when torch with CUDA is
importable, over a phase of busy bf16 matmuls on GPU 0. For each phase it prints the
counter deltas (mJ), the average power they imply (mW), the energy from integrating
the sampled power readings (mJ) as a cross-check, and the power limits. NVML's power
readings are ~1 s averages sampled part of the time, so the two figures agree only
roughly (shared/data/README.md); the counter is the one the agent uses.

    .venv/bin/python scripts/gpu-energy-check.py --seconds 5
    .venv/bin/python scripts/gpu-energy-check.py --seconds 10 --no-load --json

Exit status: 0 when every window is valid and, under load, GPU 0's counter moved and
its average power lies between 1 W and 110 % of its limit; 1 otherwise; 2 when NVML
cannot be opened.
"""

from __future__ import annotations

import argparse
import importlib
import itertools
import json
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from provider_agent.energy import (
    EnergyMeterError,
    EnergyReading,
    NvmlMeter,
    window_energy,
)


@dataclass
class GpuPhase:
    """One GPU over one phase."""

    uuid: str
    name: str
    counter_delta_mj: int | None
    counter_avg_power_mw: int | None
    integrated_power_mj: int | None
    sampled_power_min_mw: int | None
    sampled_power_max_mw: int | None
    power_limit_mw: int | None


@dataclass
class Phase:
    """All GPUs over one phase."""

    label: str
    duration_ns: int
    samples: int
    valid: bool
    basis: str
    total_mj: int | None
    avg_power_mw: int | None
    gpus: list[GpuPhase]


def integrate_power(readings: list[EnergyReading], uuid: str) -> int | None:
    """Trapezoidal integral of sampled power (mW x ns -> mJ); None if a sample lacks power."""
    powers = [next(g.power_mw for g in r.gpus if g.uuid == uuid) for r in readings]
    if any(p is None for p in powers):
        return None
    total = 0
    for (before, p0), (after, p1) in itertools.pairwise(zip(readings, powers, strict=True)):
        total += ((p0 or 0) + (p1 or 0)) * (after.monotonic_ns - before.monotonic_ns)
    return total // 2_000_000_000


def sample(meter: NvmlMeter, seconds: float, interval: float) -> list[EnergyReading]:
    """Readings every `interval` seconds for `seconds`."""
    readings = [meter.read()]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(interval)
        readings.append(meter.read())
    return readings


def measure(label: str, meter: NvmlMeter, seconds: float, interval: float) -> Phase:
    """Sample one phase and compare the counter with integrated power."""
    readings = sample(meter, seconds, interval)
    window = window_energy(readings[0], readings[-1])
    deltas = {g.uuid: g.energy_mj for g in window.gpus}
    gpus = []
    for gpu in readings[-1].gpus:
        known = [
            g.power_mw
            for r in readings
            for g in r.gpus
            if g.uuid == gpu.uuid and g.power_mw is not None
        ]
        delta = deltas.get(gpu.uuid)
        gpus.append(
            GpuPhase(
                uuid=gpu.uuid,
                name=gpu.name,
                counter_delta_mj=delta,
                counter_avg_power_mw=None
                if delta is None
                else delta * 1_000_000_000 // window.duration_ns,
                integrated_power_mj=integrate_power(readings, gpu.uuid),
                sampled_power_min_mw=min(known) if known else None,
                sampled_power_max_mw=max(known) if known else None,
                power_limit_mw=gpu.power_limit_mw,
            )
        )
    return Phase(
        label=label,
        duration_ns=window.duration_ns,
        samples=len(readings),
        valid=window.valid,
        basis=window.basis,
        total_mj=window.total_mj,
        avg_power_mw=window.avg_power_mw,
        gpus=gpus,
    )


def start_load(seconds: float) -> tuple[threading.Thread, str] | None:
    """Busy bf16 matmuls on cuda:0 in a thread for a little longer than `seconds`."""
    try:
        torch: Any = importlib.import_module("torch")
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None

    def work() -> None:
        a = torch.randn(8192, 8192, device="cuda:0", dtype=torch.bfloat16)
        b = torch.randn(8192, 8192, device="cuda:0", dtype=torch.bfloat16)
        deadline = time.monotonic() + seconds + 1.0
        while time.monotonic() < deadline:
            for _ in range(20):
                a = (a @ b) * 1e-4
            torch.cuda.synchronize()

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    time.sleep(1.0)  # let clocks and power ramp before the window opens
    return thread, f"torch {torch.__version__} bf16 8192x8192 matmul on cuda:0"


def show(phase: Phase) -> None:
    """Print one phase for a person."""
    seconds = phase.duration_ns / 1e9
    print(f"\n== {phase.label}: {seconds:.3f} s, {phase.samples} samples, valid={phase.valid}")
    print(f"   basis: {phase.basis}")
    print(f"   total: {phase.total_mj} mJ, average {phase.avg_power_mw} mW")
    for g in phase.gpus:
        integrated, delta = g.integrated_power_mj, g.counter_delta_mj
        ratio = f"{integrated / delta:.3f}" if integrated is not None and delta else "n/a"
        print(
            f"   {g.uuid} {g.name}: counter +{g.counter_delta_mj} mJ "
            f"(avg {g.counter_avg_power_mw} mW), integrated power {g.integrated_power_mj} mJ "
            f"(ratio {ratio}), sampled {g.sampled_power_min_mw}..{g.sampled_power_max_mw} mW, "
            f"limit {g.power_limit_mw} mW"
        )


def loaded_gpu_ok(phase: Phase) -> bool:
    """Under load GPU 0's counter moved and its power lies between 1 W and 110 % of limit."""
    gpu = phase.gpus[0]
    if gpu.counter_delta_mj is None or gpu.counter_avg_power_mw is None:
        return False
    limit = gpu.power_limit_mw
    ceiling = limit * 11 // 10 if limit is not None else 10**9
    return gpu.counter_delta_mj > 0 and 1_000 <= gpu.counter_avg_power_mw <= ceiling


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each phase")
    parser.add_argument("--interval", type=float, default=0.1, help="seconds between samples")
    parser.add_argument("--no-load", action="store_true", help="skip the matmul phase")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    args = parser.parse_args(argv)
    try:
        meter = NvmlMeter()
    except EnergyMeterError as exc:
        print(f"NVML meter unavailable ({exc.code}): {exc}", file=sys.stderr)
        return 2
    with meter:
        info = meter.describe()
        phases = [measure("idle", meter, args.seconds, args.interval)]
        load = None if args.no_load else start_load(args.seconds)
        if load is not None:
            thread, what = load
            phases.append(measure(f"load ({what})", meter, args.seconds, args.interval))
            thread.join()
        elif not args.no_load:
            print("torch with CUDA is not importable: load phase skipped", file=sys.stderr)
    ok = all(p.valid for p in phases) and (load is None or loaded_gpu_ok(phases[-1]))
    if args.json:
        print(json.dumps({"meter": asdict(info), "phases": [asdict(p) for p in phases], "ok": ok}))
    else:
        print(f"meter {info.kind} ({info.method}), driver {info.driver_version}")
        for gpu in info.gpus:
            print(f"   {gpu.uuid} {gpu.name}, power limit {gpu.power_limit_mw} mW")
        for phase in phases:
            show(phase)
        print(f"\nresult: {'OK' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
