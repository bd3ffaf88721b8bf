"""Energy metering: meters, windows between readings and per-request attribution.

Energy is integer millijoules and power integer milliwatts throughout; a figure that
was not measured is `None` with a method and a reason, never a made-up number.
"""

from provider_agent.energy.attribution import (
    RequestActivity,
    RequestEnergy,
    attribute_window,
    combine_shares,
    largest_remainder,
)
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
from provider_agent.energy.estimated import EstimatedMeter
from provider_agent.energy.meter import (
    EnergyMeter,
    EnergyReading,
    GpuInfo,
    GpuReading,
    MeterInfo,
    Method,
)
from provider_agent.energy.nvml import IndexOrder, NvmlApi, NvmlMeter
from provider_agent.energy.select import (
    MeterConfig,
    gpu_index_order,
    gpus_to_meter,
    meter_config,
    select_meter,
)
from provider_agent.energy.unmeasured import UnmeasuredMeter
from provider_agent.energy.window import GpuWindowEnergy, WindowEnergy, window_energy

__all__ = [
    "AmbiguousGpuOrderError",
    "Clock",
    "EnergyMeter",
    "EnergyMeterError",
    "EnergyReading",
    "EstimatedMeter",
    "GpuInfo",
    "GpuLostError",
    "GpuReading",
    "GpuWindowEnergy",
    "IndexOrder",
    "MeterConfig",
    "MeterDriverError",
    "MeterInfo",
    "MeterLibraryNotFoundError",
    "MeterNotSupportedError",
    "MeterReadError",
    "Method",
    "NoGpuFoundError",
    "NvmlApi",
    "NvmlMeter",
    "RequestActivity",
    "RequestEnergy",
    "UnmeasuredMeter",
    "WindowEnergy",
    "attribute_window",
    "combine_shares",
    "gpu_index_order",
    "gpus_to_meter",
    "largest_remainder",
    "meter_config",
    "select_meter",
    "system_clock",
    "window_energy",
]
