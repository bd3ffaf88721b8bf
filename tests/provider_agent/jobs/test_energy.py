"""Per-request energy: a lone request gets its window, overlapping ones are not guessed."""

from __future__ import annotations

from provider_agent.energy import EstimatedMeter, UnmeasuredMeter
from provider_agent.jobs.energy import RequestEnergyTracker

JOB_A = "a" * 32
JOB_B = "b" * 32


class _Clock:
    def __init__(self) -> None:
        self.ns = 1_000_000_000

    def __call__(self) -> tuple[int, int]:
        return self.ns, self.ns // 1_000_000

    def advance(self, seconds: int) -> None:
        self.ns += seconds * 1_000_000_000


def test_lone_request_gets_the_whole_window() -> None:
    clock = _Clock()
    tracker = RequestEnergyTracker(EstimatedMeter(100.0, "no NVML", clock=clock))
    tracker.begin(JOB_A)
    clock.advance(2)
    energy = tracker.finish(JOB_A, prompt_tokens=10, output_tokens=5)
    assert energy.method == "estimated"
    assert energy.millijoules == 200_000
    assert energy.basis is not None
    assert len(tracker) == 0


def test_overlapping_requests_are_unmeasured_not_double_counted() -> None:
    clock = _Clock()
    tracker = RequestEnergyTracker(EstimatedMeter(100.0, "no NVML", clock=clock))
    tracker.begin(JOB_A)
    tracker.begin(JOB_B)
    clock.advance(1)
    for job in (JOB_A, JOB_B):
        energy = tracker.finish(job, prompt_tokens=1, output_tokens=1)
        assert energy.method == "unmeasured"
        assert energy.millijoules is None


def test_unmeasured_meter_reports_its_reason() -> None:
    tracker = RequestEnergyTracker(UnmeasuredMeter("NVMLError_LibraryNotFound"))
    tracker.begin(JOB_A)
    energy = tracker.finish(JOB_A, prompt_tokens=1, output_tokens=1)
    assert (energy.method, energy.millijoules) == ("unmeasured", None)
    assert energy.basis == "NVMLError_LibraryNotFound"
