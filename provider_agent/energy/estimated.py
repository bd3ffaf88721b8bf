"""An estimate from a declared power: declared watts x elapsed time, flagged as such.

Only used when the provider configured a declared power and no counter works; the
window's `basis` reads e.g. "declared 350 W x 2.000 s" and its method is
"estimated", never "measured".
"""

from __future__ import annotations

from typing import Final, Literal

from provider_agent.energy.clock import Clock, system_clock
from provider_agent.energy.meter import EnergyReading, MeterInfo


def watts_to_mw(watts: float) -> int:
    """A declared power in watts as integer milliwatts (rounded); must be positive."""
    milliwatts = round(watts * 1000)
    if milliwatts <= 0:
        raise ValueError(f"declared power must be positive, got {watts} W")
    return milliwatts


class EstimatedMeter:
    """Energy estimated as a declared constant power times time."""

    kind: Final = "declared-power"

    def __init__(
        self,
        declared_power_w: float,
        reason: str,
        clock: Clock = system_clock,
        reason_code: str | None = None,
    ) -> None:
        """`reason` says why nothing is measured (e.g. the NVML error, whose `code` is
        `reason_code`); the estimate uses `declared_power_w`."""
        self._declared_mw = watts_to_mw(declared_power_w)
        self._reason = f"{reason}; energy estimated from a declared power, not measured"
        self._reason_code = reason_code
        self._clock = clock

    @property
    def method(self) -> Literal["estimated"]:
        """Always "estimated"."""
        return "estimated"

    @property
    def declared_power_mw(self) -> int:
        """The declared power in milliwatts."""
        return self._declared_mw

    def describe(self) -> MeterInfo:
        """No GPUs known; the reason states that energy is an estimate."""
        return MeterInfo(
            kind=self.kind,
            method="estimated",
            reason=self._reason,
            reason_code=self._reason_code,
        )

    def read(self) -> EnergyReading:
        """A time stamp and the declared power; energy follows from two readings."""
        monotonic_ns, unix_ms = self._clock()
        return EnergyReading(
            method="estimated",
            monotonic_ns=monotonic_ns,
            unix_ms=unix_ms,
            declared_power_mw=self._declared_mw,
            reason=self._reason,
        )

    def close(self) -> None:
        """Nothing to release."""
