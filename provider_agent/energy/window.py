"""Energy over a window between two readings of the same meter.

Measured windows take the difference of NVML's total-energy counters (integrate the
counter, not sampled power: see shared/data/README.md). A window whose counters went
backwards (driver reload, GPU reset) or whose GPU set changed is marked invalid with
a reason and carries no energy, rather than a negative or made-up number.
"""

from __future__ import annotations

from dataclasses import dataclass

from provider_agent.energy.meter import EnergyReading, Method

NS_PER_S = 1_000_000_000


@dataclass(frozen=True)
class GpuWindowEnergy:
    """One GPU's energy in a window (mJ), `None` when not measured."""

    uuid: str
    energy_mj: int | None


@dataclass(frozen=True)
class WindowEnergy:
    """Energy between two readings: per GPU, total (mJ) and average power (mW).

    `basis` states how the figure was obtained; `invalid_reason` is set, and the energy
    is `None`, when the readings cannot give a trustworthy figure.
    """

    method: Method
    start_unix_ms: int
    end_unix_ms: int
    duration_ns: int
    gpus: tuple[GpuWindowEnergy, ...]
    total_mj: int | None
    avg_power_mw: int | None
    basis: str
    invalid_reason: str | None = None

    @property
    def valid(self) -> bool:
        """True when the window's figures (possibly `None` if unmeasured) can be used."""
        return self.invalid_reason is None


def _div_round(numerator: int, denominator: int) -> int:
    """Integer division rounding half up (for non-negative operands)."""
    return (2 * numerator + denominator) // (2 * denominator)


def _seconds(duration_ns: int) -> str:
    return f"{duration_ns / NS_PER_S:.3f} s"


def _watts(power_mw: int) -> str:
    whole, milli = divmod(power_mw, 1000)
    return f"{whole} W" if milli == 0 else f"{whole}.{milli:03d}".rstrip("0") + " W"


def _window(
    start: EnergyReading,
    end: EnergyReading,
    method: Method,
    basis: str,
    gpus: tuple[GpuWindowEnergy, ...] = (),
    total_mj: int | None = None,
    invalid: str | None = None,
) -> WindowEnergy:
    duration_ns = end.monotonic_ns - start.monotonic_ns
    avg = None if total_mj is None else _div_round(total_mj * NS_PER_S, duration_ns)
    return WindowEnergy(
        method=method,
        start_unix_ms=start.unix_ms,
        end_unix_ms=end.unix_ms,
        duration_ns=duration_ns,
        gpus=gpus,
        total_mj=total_mj,
        avg_power_mw=avg,
        basis=basis,
        invalid_reason=invalid,
    )


def window_energy(start: EnergyReading, end: EnergyReading) -> WindowEnergy:
    """Energy from `start` to `end`; invalid (with a reason) rather than ever negative."""
    duration_ns = end.monotonic_ns - start.monotonic_ns
    if start.method != end.method:
        reason = f"method changed from {start.method} to {end.method}"
        return _window(start, end, "unmeasured", reason, invalid=reason)
    if duration_ns <= 0:
        reason = f"end is not after start ({duration_ns} ns)"
        return _window(start, end, start.method, reason, invalid=reason)
    if start.method == "unmeasured":
        reason = end.reason or start.reason or "no energy meter"
        return _window(start, end, "unmeasured", reason)
    if start.method == "estimated":
        return _estimated(start, end)
    return _measured(start, end)


def _estimated(start: EnergyReading, end: EnergyReading) -> WindowEnergy:
    declared = start.declared_power_mw
    if declared is None or declared != end.declared_power_mw:
        reason = f"declared power changed ({declared} mW to {end.declared_power_mw} mW)"
        return _window(start, end, "estimated", reason, invalid=reason)
    duration_ns = end.monotonic_ns - start.monotonic_ns
    total = _div_round(declared * duration_ns, NS_PER_S)
    basis = f"declared {_watts(declared)} x {_seconds(duration_ns)}"
    return _window(start, end, "estimated", basis, total_mj=total)


def _measured(start: EnergyReading, end: EnergyReading) -> WindowEnergy:
    before = {gpu.uuid: gpu.energy_mj for gpu in start.gpus}
    after = {gpu.uuid: gpu.energy_mj for gpu in end.gpus}
    if not before:
        reason = "measured readings list no GPU"
        return _window(start, end, "measured", reason, invalid=reason)
    if len(before) != len(start.gpus) or len(after) != len(end.gpus):
        reason = "a reading lists the same GPU twice"
        return _window(start, end, "measured", reason, invalid=reason)
    if set(before) != set(after):
        reason = f"GPU set changed: {sorted(before)} -> {sorted(after)}"
        return _window(start, end, "measured", reason, invalid=reason)
    gpus: list[GpuWindowEnergy] = []
    for uuid in sorted(before):
        first, last = before[uuid], after[uuid]
        if first is None or last is None:
            reason = f"no energy counter reading for GPU {uuid}"
            return _window(start, end, "measured", reason, invalid=reason)
        if last < first:
            reason = f"energy counter reset on GPU {uuid} ({first} mJ -> {last} mJ)"
            return _window(start, end, "measured", reason, invalid=reason)
        gpus.append(GpuWindowEnergy(uuid=uuid, energy_mj=last - first))
    seconds = _seconds(end.monotonic_ns - start.monotonic_ns)
    basis = f"NVML total-energy counter delta on {len(gpus)} GPU(s) over {seconds}"
    total = sum(gpu.energy_mj or 0 for gpu in gpus)
    return _window(start, end, "measured", basis, gpus=tuple(gpus), total_mj=total)
