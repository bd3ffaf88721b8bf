"""A stand-in for nvidia-ml-py on machines without an NVIDIA GPU (like this one).

It follows NVML's documented behaviour: calls before `nvmlInit` fail with
NVML_ERROR_UNINITIALIZED; the total-energy counter is in millijoules since driver
load and grows with power x time; power and limits are milliwatts; failures are
raised as `pynvml.NVMLError(code)`, which pynvml turns into its per-code subclasses.
Time advances only through `advance`, and `clock` reports it, so tests are exact. A GPU's PCI
bus id is NVML's text ("00000000:3B:00.0") as bytes, as pynvml's `nvmlPciInfo_t.busId` gives
it; GPUs given none sit on the bus in the order they are listed.
"""

# ruff: noqa: N802  (methods mirror NVML's camelCase names)

from __future__ import annotations

from dataclasses import dataclass

import pynvml

START_UNIX_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z


@dataclass
class FakeGpu:
    """One simulated GPU; set a `*_error` to an NVML code to make that call fail."""

    uuid: str
    name: str = "NVIDIA H100 80GB HBM3"
    pci_bus_id: str | None = None
    power_mw: int = 350_000
    power_limit_mw: int = 700_000
    energy_mj: int = 1_000_000_000
    energy_error: int | None = None
    power_error: int | None = None
    limit_error: int | None = None
    pci_error: int | None = None


@dataclass
class FakePciInfo:
    """The field of pynvml's `nvmlPciInfo_t` the meter reads (a ctypes char array: bytes)."""

    busId: bytes  # noqa: N815  (NVML's own field name)


class FakeNvml:
    """The slice of the `pynvml` module that `NvmlMeter` uses, over simulated GPUs."""

    NVMLError = pynvml.NVMLError

    def __init__(
        self,
        gpus: list[FakeGpu],
        driver_version: str = "550.54.15",
        init_error: int | None = None,
    ) -> None:
        self.gpus = gpus
        self.driver_version = driver_version
        self.init_error = init_error
        self.initialised = False
        self.shutdown_calls = 0
        self.now_ns = 5_000_000_000

    def advance(self, ns: int) -> None:
        """Let `ns` nanoseconds pass: every counter grows by its power x time."""
        self.now_ns += ns
        for gpu in self.gpus:
            gpu.energy_mj += gpu.power_mw * ns // 1_000_000_000

    def clock(self) -> tuple[int, int]:
        """The simulated (monotonic ns, unix ms) clock."""
        return self.now_ns, START_UNIX_MS + self.now_ns // 1_000_000

    def _check(self, error: int | None = None) -> None:
        if not self.initialised:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_UNINITIALIZED)
        if error is not None:
            raise pynvml.NVMLError(error)

    def nvmlInit(self) -> None:
        if self.init_error is not None:
            raise pynvml.NVMLError(self.init_error)
        self.initialised = True

    def nvmlShutdown(self) -> None:
        self._check()
        self.initialised = False
        self.shutdown_calls += 1

    def nvmlSystemGetDriverVersion(self) -> str:
        self._check()
        return self.driver_version

    def nvmlDeviceGetCount(self) -> int:
        self._check()
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeGpu:
        self._check(None if 0 <= index < len(self.gpus) else pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return self.gpus[index]

    def nvmlDeviceGetUUID(self, handle: FakeGpu) -> str:
        self._check()
        return handle.uuid

    def nvmlDeviceGetName(self, handle: FakeGpu) -> str:
        self._check()
        return handle.name

    def nvmlDeviceGetPciInfo(self, handle: FakeGpu) -> FakePciInfo:
        self._check(handle.pci_error)
        listed = next(i for i, gpu in enumerate(self.gpus) if gpu is handle)
        bus_id = handle.pci_bus_id or f"00000000:{0x18 + 0x10 * listed:02X}:00.0"
        return FakePciInfo(busId=bus_id.encode())

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: FakeGpu) -> int:
        self._check(handle.energy_error)
        return handle.energy_mj

    def nvmlDeviceGetPowerUsage(self, handle: FakeGpu) -> int:
        self._check(handle.power_error)
        return handle.power_mw

    def nvmlDeviceGetEnforcedPowerLimit(self, handle: FakeGpu) -> int:
        self._check(handle.limit_error)
        return handle.power_limit_mw


def two_h100s() -> FakeNvml:
    """Two H100s drawing 350 W and 200 W."""
    return FakeNvml(
        [
            FakeGpu(uuid="GPU-11111111-2222-3333-4444-555555555555", power_mw=350_000),
            FakeGpu(
                uuid="GPU-66666666-7777-8888-9999-000000000000",
                power_mw=200_000,
                energy_mj=42_000_000,
            ),
        ]
    )


A4000 = "GPU-a4000000-0000"
H100 = "GPU-h1000000-1111"


def mixed_gpus() -> FakeNvml:
    """In NVML's (PCI bus) order an RTX A4000 at 140 W, then an H100 at 350 W. CUDA's default
    order counts the faster H100 first, so CUDA's GPU 0 is NVML's GPU 1."""
    return FakeNvml(
        [
            FakeGpu(uuid=A4000, name="NVIDIA RTX A4000", power_mw=140_000),
            FakeGpu(uuid=H100, power_mw=350_000),
        ]
    )


def mixed_gpus_out_of_bus_order() -> FakeNvml:
    """NVML lists the H100 (at 350 W, PCI bus 0x3B) before the RTX A4000 (140 W, bus 0x18):
    by PCI bus id, as CUDA counts with `CUDA_DEVICE_ORDER=PCI_BUS_ID`, the A4000 is GPU 0."""
    return FakeNvml(
        [
            FakeGpu(uuid=H100, power_mw=350_000, pci_bus_id="00000000:3B:00.0"),
            FakeGpu(
                uuid=A4000,
                name="NVIDIA RTX A4000",
                power_mw=140_000,
                pci_bus_id="00000000:18:00.0",
            ),
        ]
    )
