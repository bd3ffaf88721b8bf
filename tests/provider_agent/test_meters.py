"""The fallback meters and meter selection."""

from __future__ import annotations

import pynvml
import pytest

from provider_agent.energy import (
    EnergyMeter,
    EstimatedMeter,
    MeterConfig,
    NvmlMeter,
    UnmeasuredMeter,
    select_meter,
    window_energy,
)
from provider_agent.energy.estimated import watts_to_mw
from tests.provider_agent.nvml_double import FakeGpu, FakeNvml, two_h100s


class StepClock:
    """A clock that moves one step per call."""

    def __init__(self, step_ns: int) -> None:
        self.step_ns = step_ns
        self.now_ns = 0

    def __call__(self) -> tuple[int, int]:
        self.now_ns += self.step_ns
        return self.now_ns, 1_767_225_600_000 + self.now_ns // 1_000_000


def test_unmeasured_meter_reads_no_energy_and_says_why() -> None:
    meter = UnmeasuredMeter("no NVML, no RAPL", clock=StepClock(10**9))
    assert isinstance(meter, EnergyMeter)
    assert meter.method == "unmeasured"
    assert meter.describe().reason == "no NVML, no RAPL"
    assert meter.describe().gpus == ()
    reading = meter.read()
    assert (reading.method, reading.gpus, reading.reason) == ("unmeasured", (), "no NVML, no RAPL")
    assert reading.monotonic_ns == 10**9


def test_estimated_meter_is_flagged_and_gives_declared_power_times_time() -> None:
    meter = EstimatedMeter(350, "NVML unavailable", clock=StepClock(2 * 10**9))
    assert isinstance(meter, EnergyMeter)
    assert meter.method == "estimated"
    assert meter.declared_power_mw == 350_000
    info = meter.describe()
    assert info.method == "estimated"
    assert info.reason == "NVML unavailable; energy estimated from a declared power, not measured"
    window = window_energy(meter.read(), meter.read())
    assert (window.method, window.total_mj, window.basis) == (
        "estimated",
        700_000,
        "declared 350 W x 2.000 s",
    )


@pytest.mark.parametrize("watts", [0, -5, 0.0004])
def test_declared_power_must_be_positive(watts: float) -> None:
    with pytest.raises(ValueError, match="must be positive"):
        watts_to_mw(watts)


def test_select_prefers_nvml_when_it_measures() -> None:
    nvml = two_h100s()
    meter = select_meter(MeterConfig(declared_power_w=300), nvml=nvml, clock=nvml.clock)
    assert isinstance(meter, NvmlMeter)
    assert meter.method == "measured"


def test_select_falls_back_to_unmeasured_on_this_machine() -> None:
    """The real pynvml: libnvidia-ml is absent here, so nothing is measured."""
    meter = select_meter(MeterConfig())
    if isinstance(meter, NvmlMeter):
        meter.close()
        pytest.skip("this machine has a working NVML")
    assert isinstance(meter, UnmeasuredMeter)
    reason = meter.describe().reason
    assert reason is not None
    assert reason.startswith("NVML unavailable (")


def test_select_falls_back_to_estimated_only_with_a_declared_power() -> None:
    nvml = FakeNvml([], init_error=pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)
    meter = select_meter(MeterConfig(declared_power_w=250.5), nvml=nvml)
    assert isinstance(meter, EstimatedMeter)
    assert meter.declared_power_mw == 250_500
    assert meter.describe().reason == (
        "NVML unavailable (library_not_found): NVML initialising: "
        "NVML Shared Library Not Found (code 12); "
        "energy estimated from a declared power, not measured"
    )


def test_select_never_claims_measured_for_a_pre_volta_gpu() -> None:
    nvml = FakeNvml(
        [FakeGpu(uuid="GPU-p100", name="Tesla P100", energy_error=pynvml.NVML_ERROR_NOT_SUPPORTED)]
    )
    meter = select_meter(MeterConfig(), nvml=nvml)
    assert meter.method == "unmeasured"
    reason = meter.describe().reason
    assert reason is not None
    assert reason.startswith("NVML unavailable (not_supported): ")
    assert "Tesla P100" in reason


def test_select_with_nvml_disabled() -> None:
    meter = select_meter(MeterConfig(use_nvml=False), nvml=two_h100s())
    assert meter.method == "unmeasured"
    assert meter.describe().reason == "NVML disabled by configuration"
