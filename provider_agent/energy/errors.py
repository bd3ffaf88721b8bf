"""Exceptions raised by energy meters, all under one root.

Foreign errors (NVML's `NVMLError`, OS errors) are translated into these where they
enter, so callers only ever catch `EnergyMeterError`. `code` is a stable string that
attestations and logs can carry.
"""

from typing import ClassVar


class EnergyMeterError(Exception):
    """Root of every error raised by `provider_agent.energy`."""

    code: ClassVar[str] = "energy_meter_error"


class MeterLibraryNotFoundError(EnergyMeterError):
    """The metering library (e.g. libnvidia-ml.so.1) is not installed on this machine."""

    code = "library_not_found"


class MeterDriverError(EnergyMeterError):
    """The library is present but the driver is not loaded, mismatched or refuses access."""

    code = "driver_unavailable"


class NoGpuFoundError(EnergyMeterError):
    """The library works but reports no GPU to meter."""

    code = "no_gpu"


class AmbiguousGpuOrderError(EnergyMeterError):
    """GPUs are named by CUDA index in an order NVML cannot reproduce, so which GPUs they are
    is unknown (CUDA's default order puts the fastest first; NVML counts by PCI bus)."""

    code = "ambiguous_gpu_order"


class MeterNotSupportedError(EnergyMeterError):
    """The GPU cannot report what the meter needs (e.g. no energy counter before Volta)."""

    code = "not_supported"


class GpuLostError(EnergyMeterError):
    """A GPU fell off the bus or needs a reset; its readings can no longer be trusted."""

    code = "gpu_lost"


class MeterReadError(EnergyMeterError):
    """Any other failure while reading the meter."""

    code = "read_failed"
