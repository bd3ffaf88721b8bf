"""Metering only the GPUs the engine runs on: `energy.gpus` or `CUDA_VISIBLE_DEVICES`."""

from __future__ import annotations

import pynvml
import pytest

from provider_agent.energy import (
    AmbiguousGpuOrderError,
    EnergyMeter,
    MeterConfig,
    MeterNotSupportedError,
    NoGpuFoundError,
    NvmlMeter,
    gpu_index_order,
    gpus_to_meter,
    meter_config,
    select_meter,
    window_energy,
)
from provider_agent.energy.nvml import pci_bus_key
from provider_agent.jobs.energy import RequestEnergyTracker
from tests.provider_agent.nvml_double import (
    A4000,
    H100,
    FakeGpu,
    FakeNvml,
    mixed_gpus,
    mixed_gpus_out_of_bus_order,
)


def eight_gpus() -> FakeNvml:
    """GPU 0 draws 350 W; GPUs 1..7 run someone else's work at 600 W."""
    return FakeNvml(
        [
            FakeGpu(uuid=f"GPU-{i}000000-aaaa", power_mw=350_000 if i == 0 else 600_000)
            for i in range(8)
        ]
    )


def test_a_request_on_the_visible_gpu_is_charged_that_gpu_only() -> None:
    nvml = eight_gpus()
    gpus = gpus_to_meter(None, {"CUDA_VISIBLE_DEVICES": "0"})
    meter = select_meter(MeterConfig(gpus=gpus), nvml=nvml, clock=nvml.clock)
    tracker = RequestEnergyTracker(meter)
    tracker.begin("job")
    nvml.advance(2_000_000_000)
    energy = tracker.finish("job", prompt_tokens=10, output_tokens=100)
    assert energy.method == "measured"
    assert energy.millijoules == 2 * 350_000
    assert [gpu.uuid for gpu in meter.describe().gpus] == ["GPU-0000000-aaaa"]


def test_gpus_are_selected_by_index_or_uuid_prefix_in_the_order_given() -> None:
    nvml = eight_gpus()
    meter = NvmlMeter(nvml, clock=nvml.clock, gpus=["GPU-3", "5"])
    start = meter.read()
    nvml.advance(10**9)
    window = window_energy(start, meter.read())
    assert [gpu.uuid for gpu in start.gpus] == ["GPU-3000000-aaaa", "GPU-5000000-aaaa"]
    assert window.total_mj == 2 * 600_000


def test_a_pre_volta_gpu_outside_the_selection_leaves_the_meter_measured() -> None:
    nvml = FakeNvml(
        [
            FakeGpu(uuid="GPU-a"),
            FakeGpu(uuid="GPU-b", name="Tesla P100", energy_error=pynvml.NVML_ERROR_NOT_SUPPORTED),
        ]
    )
    assert select_meter(MeterConfig(gpus=("0",)), nvml=nvml, clock=nvml.clock).method == "measured"
    with pytest.raises(MeterNotSupportedError, match="Tesla P100"):
        NvmlMeter(nvml, clock=nvml.clock, gpus=["1"])


@pytest.mark.parametrize("selection", [["8"], ["GPU-9"], ["GPU-"], [], ["MIG-1"]])
def test_a_selection_that_names_no_single_gpu_is_refused(selection: list[str]) -> None:
    with pytest.raises(NoGpuFoundError):
        NvmlMeter(eight_gpus(), gpus=selection)


def test_the_setting_wins_over_cuda_visible_devices_read_as_cuda_reads_it() -> None:
    assert gpus_to_meter(["GPU-1"], {"CUDA_VISIBLE_DEVICES": "0"}) == ("GPU-1",)
    assert gpus_to_meter(None, {"CUDA_VISIBLE_DEVICES": "2, 3"}) == ("2", "3")
    assert gpus_to_meter(None, {"CUDA_VISIBLE_DEVICES": "1,,2"}) == ("1",)
    assert gpus_to_meter(None, {"CUDA_VISIBLE_DEVICES": ""}) == ()
    assert gpus_to_meter(None, {}) is None


def test_no_visible_gpu_makes_the_meter_unmeasured_with_the_reason() -> None:
    nvml = eight_gpus()
    meter = select_meter(
        MeterConfig(gpus=gpus_to_meter(None, {"CUDA_VISIBLE_DEVICES": ""})), nvml=nvml
    )
    assert meter.method == "unmeasured"
    assert "selection is empty" in (meter.describe().reason or "")


def meter_for(
    nvml: FakeNvml,
    environ: dict[str, str],
    configured: list[str] | None = None,
    declared_power_w: float | None = None,
) -> EnergyMeter:
    """The meter the agent selects with `energy.gpus` = `configured` in vLLM's `environ`."""
    config = meter_config(configured, declared_power_w, environ)
    return select_meter(config, nvml=nvml, clock=nvml.clock)


def metered_uuids(meter: EnergyMeter) -> list[str]:
    assert meter.method == "measured", meter.describe().reason
    return [gpu.uuid for gpu in meter.describe().gpus]


def test_a_cuda_index_among_different_gpus_in_cuda_default_order_is_not_metered() -> None:
    environ = {"CUDA_VISIBLE_DEVICES": "0"}
    unmeasured = meter_for(mixed_gpus(), environ)
    estimated = meter_for(mixed_gpus(), environ, declared_power_w=350.0)

    assert (unmeasured.method, estimated.method) == ("unmeasured", "estimated")
    for meter in (unmeasured, estimated):
        reason = meter.describe().reason or ""
        assert "(ambiguous_gpu_order)" in reason
        assert "CUDA_DEVICE_ORDER=PCI_BUS_ID" in reason
        assert "NVIDIA H100 80GB HBM3; NVIDIA RTX A4000" in reason
        assert meter.read().reason == meter.describe().reason


def test_fastest_first_named_explicitly_is_as_ambiguous() -> None:
    environ = {"CUDA_VISIBLE_DEVICES": "1", "CUDA_DEVICE_ORDER": "FASTEST_FIRST"}
    with pytest.raises(AmbiguousGpuOrderError, match="CUDA index 1"):
        NvmlMeter(mixed_gpus(), gpus=["1"], index_order=gpu_index_order(None, environ))


def test_cuda_indices_in_pci_bus_order_meter_the_gpu_they_name() -> None:
    nvml = mixed_gpus()
    meter = meter_for(nvml, {"CUDA_VISIBLE_DEVICES": "1", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"})
    start = meter.read()
    nvml.advance(10**9)

    assert metered_uuids(meter) == [H100]
    assert window_energy(start, meter.read()).total_mj == 350_000


def test_cuda_indices_in_pci_bus_order_follow_the_bus_not_nvmls_index_order() -> None:
    nvml = mixed_gpus_out_of_bus_order()
    pci_bus = {"CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    first = meter_for(nvml, {**pci_bus, "CUDA_VISIBLE_DEVICES": "0"})
    second = meter_for(nvml, {**pci_bus, "CUDA_VISIBLE_DEVICES": "1"})
    start = second.read()
    nvml.advance(10**9)

    assert metered_uuids(first) == [A4000]  # bus 0x18, though NVML lists it second
    assert metered_uuids(second) == [H100]
    assert window_energy(start, second.read()).total_mj == 350_000
    both = meter_for(nvml, {**pci_bus, "CUDA_VISIBLE_DEVICES": "1,0"})
    assert metered_uuids(both) == [H100, A4000]
    # energy.gpus indices stay NVML's, as nvidia-smi shows them
    assert metered_uuids(meter_for(nvml, pci_bus, configured=["0"])) == [H100]


def test_cuda_indices_among_identical_gpus_in_default_order_follow_the_bus() -> None:
    nvml = FakeNvml(
        [
            FakeGpu(uuid="GPU-b", pci_bus_id="00000000:C1:00.0"),
            FakeGpu(uuid="GPU-a", pci_bus_id="00000000:41:00.0"),
        ]
    )
    assert metered_uuids(meter_for(nvml, {"CUDA_VISIBLE_DEVICES": "0"})) == ["GPU-a"]


def test_pci_bus_ids_compare_whatever_their_case_and_domain_width() -> None:
    assert pci_bus_key(b"00000000:3B:00.0\x00") == pci_bus_key("0000:3b:00.0") == (0, 0x3B, 0, 0)
    assert pci_bus_key("00000001:18:00.0") > pci_bus_key("00000000:C1:00.0")
    with pytest.raises(AmbiguousGpuOrderError, match="PCI bus id"):
        pci_bus_key("not a bus id")


def test_the_pci_bus_is_read_only_for_cuda_indices_and_its_errors_are_mapped() -> None:
    def unreadable_bus() -> FakeNvml:
        nvml = mixed_gpus_out_of_bus_order()
        nvml.gpus[1].pci_error = pynvml.NVML_ERROR_GPU_IS_LOST
        return nvml

    environ = {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": "0"}
    assert metered_uuids(meter_for(unreadable_bus(), environ, configured=[A4000])) == [A4000]
    assert metered_uuids(meter_for(unreadable_bus(), {"CUDA_VISIBLE_DEVICES": H100})) == [H100]
    lost = meter_for(unreadable_bus(), environ)
    assert lost.method == "unmeasured"
    assert "(gpu_lost)" in (lost.describe().reason or "")
    assert "reading GPU 1 PCI bus id" in (lost.describe().reason or "")


def test_cuda_indices_among_identical_gpus_are_metered_in_cuda_default_order() -> None:
    assert metered_uuids(meter_for(eight_gpus(), {"CUDA_VISIBLE_DEVICES": "2,0"})) == [
        "GPU-2000000-aaaa",
        "GPU-0000000-aaaa",
    ]


@pytest.mark.parametrize(
    ("configured", "environ"),
    [
        (None, {"CUDA_VISIBLE_DEVICES": "GPU-h1"}),
        (["GPU-h1"], {"CUDA_VISIBLE_DEVICES": "0"}),
        (["1"], {"CUDA_VISIBLE_DEVICES": "0"}),
    ],
    ids=["uuid-in-cuda-visible-devices", "uuid-in-energy-gpus", "nvml-index-in-energy-gpus"],
)
def test_uuids_and_nvml_indices_name_the_gpu_in_any_cuda_order(
    configured: list[str] | None, environ: dict[str, str]
) -> None:
    assert metered_uuids(meter_for(mixed_gpus(), environ, configured)) == [H100]


def test_every_gpu_is_metered_whatever_the_order() -> None:
    assert metered_uuids(meter_for(mixed_gpus(), {})) == [A4000, H100]
