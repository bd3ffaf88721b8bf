"""NvmlMeter over the NVML double (no NVIDIA GPU here) and over the real pynvml."""

from __future__ import annotations

import ctypes

import pynvml
import pytest

from provider_agent.energy import (
    EnergyMeter,
    EnergyMeterError,
    GpuLostError,
    MeterDriverError,
    MeterLibraryNotFoundError,
    MeterNotSupportedError,
    MeterReadError,
    NoGpuFoundError,
    NvmlMeter,
    window_energy,
)
from provider_agent.energy.nvml import pci_bus_key, translate_nvml_error
from tests.provider_agent.nvml_double import FakeGpu, FakeNvml, two_h100s

UUID_A = "GPU-11111111-2222-3333-4444-555555555555"
UUID_B = "GPU-66666666-7777-8888-9999-000000000000"


def test_describe_lists_gpus_driver_and_power_limits() -> None:
    nvml = two_h100s()
    nvml.gpus[1].power_limit_mw = 650_000
    meter = NvmlMeter(nvml, clock=nvml.clock)
    assert isinstance(meter, EnergyMeter)
    info = meter.describe()
    assert (info.kind, info.method, info.driver_version, info.reason) == (
        "nvml",
        "measured",
        "550.54.15",
        None,
    )
    assert [(g.uuid, g.name, g.power_limit_mw) for g in info.gpus] == [
        (UUID_A, "NVIDIA H100 80GB HBM3", 700_000),
        (UUID_B, "NVIDIA H100 80GB HBM3", 650_000),
    ]


def test_read_gives_counters_power_and_limits_in_integer_units() -> None:
    nvml = two_h100s()
    reading = NvmlMeter(nvml, clock=nvml.clock).read()
    assert reading.method == "measured"
    assert (reading.monotonic_ns, reading.unix_ms) == (5_000_000_000, 1_767_225_605_000)
    assert [(g.uuid, g.energy_mj, g.power_mw, g.power_limit_mw) for g in reading.gpus] == [
        (UUID_A, 1_000_000_000, 350_000, 700_000),
        (UUID_B, 42_000_000, 200_000, 700_000),
    ]


def test_window_over_two_reads_is_the_counter_delta() -> None:
    nvml = two_h100s()
    meter = NvmlMeter(nvml, clock=nvml.clock)
    start = meter.read()
    nvml.advance(2_000_000_000)
    window = window_energy(start, meter.read())
    assert window.valid
    assert [(g.uuid, g.energy_mj) for g in window.gpus] == [(UUID_A, 700_000), (UUID_B, 400_000)]
    assert (window.total_mj, window.avg_power_mw, window.duration_ns) == (
        1_100_000,
        550_000,
        2_000_000_000,
    )


def test_driver_reload_between_reads_is_an_invalid_window() -> None:
    nvml = two_h100s()
    meter = NvmlMeter(nvml, clock=nvml.clock)
    start = meter.read()
    nvml.gpus[0].energy_mj = 0
    nvml.advance(1_000_000_000)
    window = window_energy(start, meter.read())
    assert not window.valid
    assert window.total_mj is None
    assert window.invalid_reason == (
        f"energy counter reset on GPU {UUID_A} (1000000000 mJ -> 350000 mJ)"
    )


def test_power_not_supported_leaves_power_none_but_energy_measured() -> None:
    nvml = FakeNvml([FakeGpu(uuid=UUID_A, power_error=pynvml.NVML_ERROR_NOT_SUPPORTED)])
    reading = NvmlMeter(nvml, clock=nvml.clock).read()
    assert reading.method == "measured"
    assert (reading.gpus[0].energy_mj, reading.gpus[0].power_mw) == (1_000_000_000, None)


def test_pre_volta_gpu_without_energy_counter_refuses_to_open() -> None:
    nvml = FakeNvml(
        [
            FakeGpu(uuid=UUID_A),
            FakeGpu(
                uuid=UUID_B,
                name="Tesla P100-PCIE-16GB",
                energy_error=pynvml.NVML_ERROR_NOT_SUPPORTED,
            ),
        ]
    )
    with pytest.raises(MeterNotSupportedError, match=r"GPU 1 \(Tesla P100-PCIE-16GB\)"):
        NvmlMeter(nvml, clock=nvml.clock)
    assert nvml.shutdown_calls == 1


def test_library_not_found_at_init() -> None:
    nvml = FakeNvml([], init_error=pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)
    with pytest.raises(MeterLibraryNotFoundError) as caught:
        NvmlMeter(nvml)
    assert isinstance(caught.value.__cause__, pynvml.NVMLError_LibraryNotFound)
    assert caught.value.code == "library_not_found"


def test_no_gpu_is_an_error() -> None:
    with pytest.raises(NoGpuFoundError):
        NvmlMeter(FakeNvml([]))


def test_gpu_lost_during_read() -> None:
    nvml = two_h100s()
    meter = NvmlMeter(nvml, clock=nvml.clock)
    nvml.gpus[1].energy_error = pynvml.NVML_ERROR_GPU_IS_LOST
    with pytest.raises(GpuLostError, match=UUID_B):
        meter.read()


def test_close_shuts_nvml_down_and_later_reads_fail_as_driver_errors() -> None:
    nvml = two_h100s()
    with NvmlMeter(nvml, clock=nvml.clock) as meter:
        meter.read()
    assert nvml.shutdown_calls == 1
    with pytest.raises(MeterDriverError):
        meter.read()


EXPECTED = {
    pynvml.NVML_ERROR_LIBRARY_NOT_FOUND: MeterLibraryNotFoundError,
    pynvml.NVML_ERROR_NOT_SUPPORTED: MeterNotSupportedError,
    pynvml.NVML_ERROR_FUNCTION_NOT_FOUND: MeterNotSupportedError,
    pynvml.NVML_ERROR_GPU_IS_LOST: GpuLostError,
    pynvml.NVML_ERROR_RESET_REQUIRED: GpuLostError,
    pynvml.NVML_ERROR_GPU_NOT_FOUND: GpuLostError,
    pynvml.NVML_ERROR_DRIVER_NOT_LOADED: MeterDriverError,
    pynvml.NVML_ERROR_NO_PERMISSION: MeterDriverError,
    pynvml.NVML_ERROR_UNINITIALIZED: MeterDriverError,
    pynvml.NVML_ERROR_LIB_RM_VERSION_MISMATCH: MeterDriverError,
}
ALL_CODES = sorted(getattr(pynvml, name) for name in dir(pynvml) if name.startswith("NVML_ERROR_"))


@pytest.mark.parametrize("code", ALL_CODES)
def test_every_nvml_error_code_is_mapped(code: int) -> None:
    error = translate_nvml_error(pynvml.NVMLError(code), "reading")
    assert isinstance(error, EXPECTED.get(code, MeterReadError))
    assert isinstance(error, EnergyMeterError)
    assert f"(code {code})" in str(error)


@pytest.mark.parametrize(("code", "expected"), sorted(EXPECTED.items()))
def test_each_nvml_error_raised_at_init_reaches_the_caller_mapped(
    code: int, expected: type[EnergyMeterError]
) -> None:
    with pytest.raises(expected):
        NvmlMeter(FakeNvml([FakeGpu(uuid=UUID_A)], init_error=code))


def _libnvidia_ml_loads() -> bool:
    try:
        ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        return False
    return True


@pytest.mark.skipif(_libnvidia_ml_loads(), reason="libnvidia-ml is present here")
def test_real_pynvml_without_libnvidia_ml_is_library_not_found() -> None:
    with pytest.raises(MeterLibraryNotFoundError, match="NVML Shared Library Not Found"):
        NvmlMeter()


@pytest.mark.skipif(not _libnvidia_ml_loads(), reason="no libnvidia-ml on this machine")
def test_real_pynvml_measures_on_a_gpu_machine() -> None:
    with NvmlMeter() as meter:
        first = meter.read()
        second = meter.read()
    assert first.gpus
    assert all(g.energy_mj is not None for g in first.gpus)
    assert window_energy(first, second).valid


@pytest.mark.skipif(not _libnvidia_ml_loads(), reason="no libnvidia-ml on this machine")
def test_real_pynvml_matches_cuda_index_0_by_pci_bus_id() -> None:
    pynvml.nvmlInit()
    try:
        count = pynvml.nvmlDeviceGetCount()
        handles = [pynvml.nvmlDeviceGetHandleByIndex(index) for index in range(count)]
        lowest = min(handles, key=lambda h: pci_bus_key(pynvml.nvmlDeviceGetPciInfo(h).busId))
        expected = pynvml.nvmlDeviceGetUUID(lowest)
    finally:
        pynvml.nvmlShutdown()
    with NvmlMeter(gpus=["0"], index_order="pci_bus") as first:
        assert [gpu.uuid for gpu in first.describe().gpus] == [expected]
