"""Energy for one request from the agent's meter, with an honest fallback.

A request's window runs from acceptance to its last token. When no other request ran
at any moment of it, the window's energy is its alone (`attribute_window` with one
request). When requests overlapped, per-request shares need the window attribution of
the attestation loop, which is not wired here yet: such a request is reported
"unmeasured" with that reason rather than with a number that could double-count.
"""

from __future__ import annotations

from dataclasses import dataclass

from protocol.messages import EnergyAttribution
from provider_agent.energy import (
    EnergyMeter,
    EnergyMeterError,
    EnergyReading,
    RequestActivity,
    attribute_window,
    window_energy,
)

_MAX_BASIS = 256


def _basis(text: str) -> str:
    text = text.strip() or "no reason given"
    return text if len(text) <= _MAX_BASIS else text[: _MAX_BASIS - 3] + "..."


def unmeasured(reason: str) -> EnergyAttribution:
    """An attribution with no number and the reason."""
    return EnergyAttribution(method="unmeasured", millijoules=None, basis=_basis(reason))


@dataclass
class _Span:
    start: EnergyReading | None
    error: str | None
    overlapped: bool = False


class RequestEnergyTracker:
    """Reads the meter when a request starts and ends and notes overlapping requests."""

    def __init__(self, meter: EnergyMeter) -> None:
        """`meter` is the agent's energy meter (NVML, estimated or unmeasured)."""
        self._meter = meter
        self._active: dict[str, _Span] = {}

    def __len__(self) -> int:
        """Requests whose window is open."""
        return len(self._active)

    def _read(self) -> tuple[EnergyReading | None, str | None]:
        try:
            return self._meter.read(), None
        except EnergyMeterError as exc:
            return None, f"meter read failed ({exc.code}): {exc}"

    def begin(self, job_id: str) -> None:
        """Start the request's window."""
        reading, error = self._read()
        span = _Span(reading, error, overlapped=bool(self._active))
        for other in self._active.values():
            other.overlapped = True
        self._active[job_id] = span

    def cancel(self, job_id: str) -> None:
        """Forget a request that ends without a receipt."""
        self._active.pop(job_id, None)

    def finish(self, job_id: str, prompt_tokens: int, output_tokens: int) -> EnergyAttribution:
        """End the request's window and return its energy."""
        span = self._active.pop(job_id, None)
        if span is None or span.start is None:
            return unmeasured(span.error if span and span.error else "no start reading")
        end, error = self._read()
        if end is None:
            return unmeasured(error or "no end reading")
        window = window_energy(span.start, end)
        if window.method == "unmeasured" or window.total_mj is None or not window.valid:
            return unmeasured(window.invalid_reason or window.basis)
        if span.overlapped:
            return unmeasured("requests overlapped; per-request share awaits window attribution")
        (share,) = attribute_window(window, [RequestActivity(job_id, output_tokens, prompt_tokens)])
        if share.energy_mj is None or share.method == "unmeasured":
            return unmeasured(share.basis)
        return EnergyAttribution(
            method=share.method, millijoules=share.energy_mj, basis=_basis(share.basis)
        )
