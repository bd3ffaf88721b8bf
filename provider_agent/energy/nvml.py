"""NVML energy meter: the total-energy counter of the NVIDIA GPUs that serve (Volta and newer).

Talks to NVML through nvidia-ml-py (`pynvml`), injected so tests can drive it with a
double where no GPU exists. Every `NVMLError` is translated into an
`EnergyMeterError` here. The meter reads the GPUs it is given (`gpus`: indices or UUIDs,
as `CUDA_VISIBLE_DEVICES` names them), or every GPU when given none; a selected GPU
without the energy counter (pre-Volta) makes opening fail with `MeterNotSupportedError`, so
this meter never claims "measured" falsely. The energy of a GPU outside the selection is
never read. Indices count GPUs as NVML does (`energy.gpus`, as `nvidia-smi` shows them), or
as CUDA does (`CUDA_VISIBLE_DEVICES`): CUDA index i is then the i-th GPU by PCI bus id
(`nvmlDeviceGetPciInfo`), which NVML's own index order is not promised to follow. When CUDA
counts fastest first (its default) and the GPUs are not all one model, opening fails with
`AmbiguousGpuOrderError` rather than meter a GPU that may be another.
"""

# ruff: noqa: N802  (the protocol mirrors NVML's own camelCase names)

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable, Sequence
from typing import Any, Final, Literal, Protocol, TypeAlias

from provider_agent.energy.clock import Clock, system_clock
from provider_agent.energy.errors import (
    AmbiguousGpuOrderError,
    EnergyMeterError,
    GpuLostError,
    MeterDriverError,
    MeterLibraryNotFoundError,
    MeterNotSupportedError,
    MeterReadError,
    NoGpuFoundError,
)
from provider_agent.energy.meter import EnergyReading, GpuInfo, GpuReading, MeterInfo

# Return codes from nvml.h (stable across releases; pynvml exposes the same values).
_NVML_ERRORS: Final[dict[int, type[EnergyMeterError]]] = {
    1: MeterDriverError,  # NVML_ERROR_UNINITIALIZED
    3: MeterNotSupportedError,  # NVML_ERROR_NOT_SUPPORTED
    4: MeterDriverError,  # NVML_ERROR_NO_PERMISSION
    9: MeterDriverError,  # NVML_ERROR_DRIVER_NOT_LOADED
    12: MeterLibraryNotFoundError,  # NVML_ERROR_LIBRARY_NOT_FOUND
    13: MeterNotSupportedError,  # NVML_ERROR_FUNCTION_NOT_FOUND (driver too old)
    15: GpuLostError,  # NVML_ERROR_GPU_IS_LOST
    16: GpuLostError,  # NVML_ERROR_RESET_REQUIRED
    18: MeterDriverError,  # NVML_ERROR_LIB_RM_VERSION_MISMATCH
    28: GpuLostError,  # NVML_ERROR_GPU_NOT_FOUND
}
NVML_ERROR_NOT_SUPPORTED: Final = 3

IndexOrder: TypeAlias = Literal["nvml", "pci_bus", "fastest_first"]
"""How the indices among the GPUs to meter count GPUs: "nvml" as NVML and `nvidia-smi` do;
"pci_bus" as CUDA does with `CUDA_DEVICE_ORDER=PCI_BUS_ID`, by PCI bus id; "fastest_first" as
CUDA does by default, fastest first, GPUs of one model tying and going by PCI bus id."""


class NvmlApi(Protocol):
    """The part of nvidia-ml-py this meter uses (the `pynvml` module satisfies it)."""

    NVMLError: type[Exception]

    def nvmlInit(self) -> None: ...
    def nvmlShutdown(self) -> None: ...
    def nvmlSystemGetDriverVersion(self) -> str: ...
    def nvmlDeviceGetCount(self) -> int: ...
    def nvmlDeviceGetHandleByIndex(self, index: int) -> Any: ...
    def nvmlDeviceGetUUID(self, handle: Any) -> str: ...
    def nvmlDeviceGetName(self, handle: Any) -> str: ...
    def nvmlDeviceGetPciInfo(self, handle: Any) -> Any: ...
    def nvmlDeviceGetTotalEnergyConsumption(self, handle: Any) -> int: ...
    def nvmlDeviceGetPowerUsage(self, handle: Any) -> int: ...
    def nvmlDeviceGetEnforcedPowerLimit(self, handle: Any) -> int: ...


def nvml_error_code(exc: BaseException) -> int | None:
    """The NVML return code carried by an `NVMLError`, if any."""
    value = getattr(exc, "value", None)
    return value if isinstance(value, int) else None


def translate_nvml_error(exc: BaseException, doing: str) -> EnergyMeterError:
    """The project's error for an `NVMLError` raised while `doing` something."""
    code = nvml_error_code(exc)
    error_class = _NVML_ERRORS.get(code, MeterReadError) if code is not None else MeterReadError
    return error_class(f"NVML {doing}: {exc} (code {code})")


def selected_gpus(
    selection: Sequence[str] | None, uuids: Sequence[str], counted: Sequence[int] | None = None
) -> list[int]:
    """The NVML indices `selection` names, in its order (`None`: all of `uuids`).

    Each entry is an index or a UUID (a unique prefix is enough), as in
    `CUDA_VISIBLE_DEVICES`; index i names the GPU of NVML index `counted[i]` (`None`: NVML's
    own order). `NoGpuFoundError` for an entry that names no GPU, or none at all.
    """
    if selection is None:
        return list(range(len(uuids)))
    order = list(range(len(uuids))) if counted is None else list(counted)
    indices: list[int] = []
    for entry in (entry.strip() for entry in selection):
        matches = [i for i, uuid in enumerate(uuids) if entry and uuid.startswith(entry)]
        if entry.isdigit() and int(entry) < len(order):
            matches = [order[int(entry)]]
        if len(matches) != 1:
            listed = ", ".join(f"{n}: {uuids[i]}" for n, i in enumerate(order))
            raise NoGpuFoundError(f"GPU selection {entry!r} names no single GPU ({listed})")
        if matches[0] not in indices:
            indices.append(matches[0])
    if not indices:
        raise NoGpuFoundError("the GPU selection is empty")
    return indices


def index_entries(selection: Sequence[str] | None) -> list[str]:
    """The entries of `selection` that name GPUs by index rather than UUID."""
    return [entry.strip() for entry in selection or () if entry.strip().isdigit()]


def check_index_order(selection: Sequence[str] | None, names: Sequence[str]) -> None:
    """`AmbiguousGpuOrderError` when `selection` names GPUs by CUDA index counted fastest
    first (any `CUDA_DEVICE_ORDER` but `PCI_BUS_ID`) while the GPUs (`names`, all of them)
    are not all one model: which GPU CUDA calls N then rests on CUDA's speed heuristic, which
    NVML cannot reproduce. GPUs of one model tie, and ties go by PCI bus id, as the meter
    then maps them."""
    indices = index_entries(selection)
    models = sorted(set(names))
    if indices and len(models) > 1:
        raise AmbiguousGpuOrderError(
            f"CUDA index {', '.join(indices)} counts GPUs fastest first (CUDA_DEVICE_ORDER is"
            f" not PCI_BUS_ID) and these GPUs differ ({'; '.join(models)}), so NVML cannot"
            " tell which GPU CUDA means: set CUDA_DEVICE_ORDER=PCI_BUS_ID for vLLM and the"
            " agent, or name the GPUs by UUID (GPU-...) in energy.gpus"
        )


def pci_bus_key(bus_id: str | bytes) -> tuple[int, int, int, int]:
    """A PCI bus id (`nvmlPciInfo_t.busId`, "00000000:3B:00.0"; any case, a 4- or 8-digit
    domain) as (domain, bus, device, function), the order CUDA's `PCI_BUS_ID` counts in;
    `AmbiguousGpuOrderError` for a text that is no PCI bus id."""
    text = _text(bus_id).strip().rstrip("\x00")
    try:
        domain, bus, slot = text.split(":")
        device, function = slot.split(".")
        return int(domain, 16), int(bus, 16), int(device, 16), int(function, 16)
    except ValueError:
        raise AmbiguousGpuOrderError(
            f"NVML gave {text!r} as a GPU's PCI bus id, so the GPUs cannot be put in the order"
            " CUDA counts them: name the GPUs by UUID (GPU-...) in energy.gpus"
        ) from None


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _load_pynvml() -> NvmlApi:
    try:
        module: NvmlApi = importlib.import_module("pynvml")
    except ImportError as exc:
        raise MeterLibraryNotFoundError(f"nvidia-ml-py is not installed: {exc}") from exc
    return module


class NvmlMeter:
    """Measured GPU energy from NVML's total-energy counters (mJ since driver load)."""

    kind: Final = "nvml"

    def __init__(
        self,
        nvml: NvmlApi | None = None,
        clock: Clock = system_clock,
        gpus: Sequence[str] | None = None,
        index_order: IndexOrder = "nvml",
    ) -> None:
        """Initialise NVML and check that every selected GPU has an energy counter.

        `gpus` selects the GPUs to meter by index (`"0"`) or UUID (`"GPU-..."`, a unique
        prefix is enough); `None` meters every GPU. `index_order` says how the indices count
        GPUs: NVML's own indices ("nvml"), or CUDA's, which are mapped by PCI bus id
        ("pci_bus"), and counted fastest first ("fastest_first") are trusted only on GPUs of
        one model (`check_index_order`).
        """
        self._nvml = nvml if nvml is not None else _load_pynvml()
        self._clock = clock
        self._selection = None if gpus is None else tuple(gpus)
        self._index_order = index_order
        self._call("initialising", self._nvml.nvmlInit)
        try:
            self._driver = _text(
                self._call("reading the driver version", self._nvml.nvmlSystemGetDriverVersion)
            )
            self._handles = self._open_devices()
        except EnergyMeterError:
            self.close()
            raise

    @property
    def method(self) -> Literal["measured"]:
        """Always "measured": opening fails rather than measure nothing."""
        return "measured"

    def _call(self, doing: str, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(*args)
        except self._nvml.NVMLError as exc:
            raise translate_nvml_error(exc, doing) from exc

    def _open_devices(self) -> list[tuple[Any, str, str]]:
        count = int(self._call("counting GPUs", self._nvml.nvmlDeviceGetCount))
        if count == 0:
            raise NoGpuFoundError("NVML reports no GPU")
        handles = [
            self._call(f"opening GPU {index}", self._nvml.nvmlDeviceGetHandleByIndex, index)
            for index in range(count)
        ]
        uuids = [
            _text(self._call(f"reading GPU {index} UUID", self._nvml.nvmlDeviceGetUUID, handle))
            for index, handle in enumerate(handles)
        ]
        indices = selected_gpus(self._selection, uuids, self._cuda_order(handles))
        devices = []
        for index in indices:
            handle = handles[index]
            name = self._name(index, handle)
            self._energy(handle, f"reading GPU {index} ({name}) energy counter (Volta or newer)")
            devices.append((handle, uuids[index], name))
        return devices

    def _cuda_order(self, handles: Sequence[Any]) -> list[int] | None:
        """The NVML indices in the order CUDA counts the GPUs (by PCI bus id), where the
        selection names GPUs by CUDA index; `None` where its indices are NVML's, or where it
        has none (only then is the GPUs' PCI information not read)."""
        if self._index_order == "nvml" or not index_entries(self._selection):
            return None
        if self._index_order == "fastest_first":
            check_index_order(self._selection, [self._name(*gpu) for gpu in enumerate(handles)])
        buses = [
            pci_bus_key(
                self._call(
                    f"reading GPU {index} PCI bus id", self._nvml.nvmlDeviceGetPciInfo, handle
                ).busId
            )
            for index, handle in enumerate(handles)
        ]
        return sorted(range(len(handles)), key=buses.__getitem__)

    def _name(self, index: int, handle: Any) -> str:
        return _text(self._call(f"reading GPU {index} name", self._nvml.nvmlDeviceGetName, handle))

    def _energy(self, handle: Any, doing: str) -> int:
        return int(self._call(doing, self._nvml.nvmlDeviceGetTotalEnergyConsumption, handle))

    def _optional(self, doing: str, fn: Callable[[Any], int], handle: Any) -> int | None:
        """A figure some GPUs lack (power, limit): `None` when NVML says not supported."""
        try:
            return int(fn(handle))
        except self._nvml.NVMLError as exc:
            if nvml_error_code(exc) == NVML_ERROR_NOT_SUPPORTED:
                return None
            raise translate_nvml_error(exc, doing) from exc

    def describe(self) -> MeterInfo:
        """GPU UUIDs, names, enforced power limits (mW) and the driver version."""
        gpus = tuple(
            GpuInfo(
                uuid=uuid,
                name=name,
                power_limit_mw=self._optional(
                    f"reading {uuid} power limit",
                    self._nvml.nvmlDeviceGetEnforcedPowerLimit,
                    handle,
                ),
            )
            for handle, uuid, name in self._handles
        )
        return MeterInfo(kind=self.kind, method="measured", gpus=gpus, driver_version=self._driver)

    def read(self) -> EnergyReading:
        """Every GPU's counter, power and limit, stamped at the middle of the reads."""
        before_ns, before_ms = self._clock()
        gpus = tuple(
            GpuReading(
                uuid=uuid,
                name=name,
                energy_mj=self._energy(handle, f"reading {uuid} energy counter"),
                power_mw=self._optional(
                    f"reading {uuid} power", self._nvml.nvmlDeviceGetPowerUsage, handle
                ),
                power_limit_mw=self._optional(
                    f"reading {uuid} power limit",
                    self._nvml.nvmlDeviceGetEnforcedPowerLimit,
                    handle,
                ),
            )
            for handle, uuid, name in self._handles
        )
        after_ns, after_ms = self._clock()
        return EnergyReading(
            method="measured",
            monotonic_ns=(before_ns + after_ns) // 2,
            unix_ms=(before_ms + after_ms) // 2,
            gpus=gpus,
        )

    def close(self) -> None:
        """Shut NVML down; errors on the way out are ignored."""
        with contextlib.suppress(self._nvml.NVMLError):
            self._nvml.nvmlShutdown()

    def __enter__(self) -> NvmlMeter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
