"""The energy-meter interface and its readings.

A meter reports what it is (`describe`) and reads counters (`read`). Energy is an
integer in millijoules and power an integer in milliwatts everywhere; a figure the
meter cannot give is `None`, never a made-up number. `method` says how figures were
obtained: "measured" (a hardware energy counter), "estimated" (declared power x
time, flagged as such) or "unmeasured" (nothing).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

Method = Literal["measured", "estimated", "unmeasured"]


@dataclass(frozen=True)
class GpuInfo:
    """One GPU as the meter sees it, with its enforced power limit in mW when known."""

    uuid: str
    name: str
    power_limit_mw: int | None


@dataclass(frozen=True)
class MeterInfo:
    """What a meter is: its kind, GPUs and driver, or why it cannot measure (`reason`, and
    `reason_code`, the `code` of the `EnergyMeterError` that left NVML unusable, if one did)."""

    kind: str
    method: Method
    gpus: tuple[GpuInfo, ...] = ()
    driver_version: str | None = None
    reason: str | None = None
    reason_code: str | None = None


@dataclass(frozen=True)
class GpuReading:
    """One GPU at one instant: total-energy counter (mJ), power (mW), power limit (mW)."""

    uuid: str
    name: str
    energy_mj: int | None
    power_mw: int | None
    power_limit_mw: int | None


@dataclass(frozen=True)
class EnergyReading:
    """All GPUs at one instant, stamped with a monotonic clock (ns) and wall clock (unix ms).

    `declared_power_mw` is set only by the estimated meter; `reason` says why energy is
    not measured when `method` is not "measured".
    """

    method: Method
    monotonic_ns: int
    unix_ms: int
    gpus: tuple[GpuReading, ...] = ()
    declared_power_mw: int | None = None
    reason: str | None = None


@runtime_checkable
class EnergyMeter(Protocol):
    """A source of energy readings for the GPUs that serve requests."""

    @property
    def method(self) -> Method:
        """How this meter's figures are obtained."""
        ...

    def describe(self) -> MeterInfo:
        """Kind, GPUs, driver and power limits, or the reason it cannot measure."""
        ...

    def read(self) -> EnergyReading:
        """Read every GPU now; raises `EnergyMeterError` on failure."""
        ...

    def close(self) -> None:
        """Release the metering library, if any."""
        ...
