"""The meter for machines that can measure nothing (no NVML, no RAPL).

It reports method "unmeasured", readings with no energy, and the reason, so that
receipts say "not measured" instead of carrying a made-up number.
"""

from __future__ import annotations

from typing import Final, Literal

from provider_agent.energy.clock import Clock, system_clock
from provider_agent.energy.meter import EnergyReading, MeterInfo


class UnmeasuredMeter:
    """Readings without energy, each stating why nothing is measured."""

    kind: Final = "none"

    def __init__(
        self, reason: str, clock: Clock = system_clock, reason_code: str | None = None
    ) -> None:
        """`reason` says why no meter works here (e.g. the NVML error, whose `code` is
        `reason_code`)."""
        self._reason = reason
        self._reason_code = reason_code
        self._clock = clock

    @property
    def method(self) -> Literal["unmeasured"]:
        """Always "unmeasured"."""
        return "unmeasured"

    def describe(self) -> MeterInfo:
        """No GPUs, no driver: only the reason."""
        return MeterInfo(
            kind=self.kind,
            method="unmeasured",
            reason=self._reason,
            reason_code=self._reason_code,
        )

    def read(self) -> EnergyReading:
        """A time stamp and the reason; no energy."""
        monotonic_ns, unix_ms = self._clock()
        return EnergyReading(
            method="unmeasured", monotonic_ns=monotonic_ns, unix_ms=unix_ms, reason=self._reason
        )

    def close(self) -> None:
        """Nothing to release."""
