"""Pick the best energy meter this machine supports, and say why."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Mapping
from dataclasses import dataclass

from provider_agent.energy.clock import Clock, system_clock
from provider_agent.energy.errors import EnergyMeterError
from provider_agent.energy.estimated import EstimatedMeter
from provider_agent.energy.meter import EnergyMeter
from provider_agent.energy.nvml import IndexOrder, NvmlApi, NvmlMeter
from provider_agent.energy.unmeasured import UnmeasuredMeter

logger = logging.getLogger(__name__)
PCI_BUS_ORDER = "PCI_BUS_ID"


@dataclass(frozen=True)
class MeterConfig:
    """The provider's metering settings.

    `declared_power_w` (watts) enables the estimated fallback; without it a machine
    with no working counter is "unmeasured". `use_nvml=False` skips NVML entirely. `gpus`
    (indices or UUIDs) are the GPUs the engine runs on; `None` meters every GPU.
    `index_order` says how those indices count GPUs (`gpu_index_order`).
    """

    declared_power_w: float | None = None
    use_nvml: bool = True
    gpus: tuple[str, ...] | None = None
    index_order: IndexOrder = "nvml"


def gpus_to_meter(
    configured: list[str] | None, environ: Mapping[str, str]
) -> tuple[str, ...] | None:
    """The GPUs to meter: `configured` (`energy.gpus`), else `CUDA_VISIBLE_DEVICES` as CUDA
    reads it (comma-separated, up to the first blank entry), else `None` (every GPU)."""
    if configured is not None:
        return tuple(configured)
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return None
    entries = [entry.strip() for entry in visible.split(",")]
    return tuple(itertools.takewhile(bool, entries))


def gpu_index_order(configured: list[str] | None, environ: Mapping[str, str]) -> IndexOrder:
    """How indices among the GPUs to meter count GPUs: those of `energy.gpus` as NVML does
    ("nvml", the indices `nvidia-smi` shows); those of `CUDA_VISIBLE_DEVICES` by PCI bus id
    with `CUDA_DEVICE_ORDER=PCI_BUS_ID` ("pci_bus"), else fastest first ("fastest_first",
    CUDA's default `FASTEST_FIRST`)."""
    if configured is not None:
        return "nvml"
    return "pci_bus" if environ.get("CUDA_DEVICE_ORDER") == PCI_BUS_ORDER else "fastest_first"


def meter_config(
    configured: list[str] | None, declared_power_w: float | None, environ: Mapping[str, str]
) -> MeterConfig:
    """The meter settings for the engine's GPUs: `configured` (`energy.gpus`), else those
    `environ` (the engine's environment) makes visible to CUDA."""
    return MeterConfig(
        declared_power_w=declared_power_w,
        gpus=gpus_to_meter(configured, environ),
        index_order=gpu_index_order(configured, environ),
    )


def select_meter(
    config: MeterConfig, nvml: NvmlApi | None = None, clock: Clock = system_clock
) -> EnergyMeter:
    """NVML if it can measure; else estimated (only with a declared power) or unmeasured.

    The fallback meters carry the reason NVML could not be used in `describe().reason`
    (its error's `code` in `describe().reason_code`) and in every reading.
    """
    code = None
    if config.use_nvml:
        try:
            return NvmlMeter(nvml, clock=clock, gpus=config.gpus, index_order=config.index_order)
        except EnergyMeterError as exc:
            code = exc.code
            reason = f"NVML unavailable ({code}): {exc}"
    else:
        reason = "NVML disabled by configuration"
    if config.declared_power_w is not None:
        meter: EnergyMeter = EstimatedMeter(
            config.declared_power_w, reason, clock=clock, reason_code=code
        )
    else:
        meter = UnmeasuredMeter(reason, clock=clock, reason_code=code)
    logger.warning("energy meter: %s (%s)", meter.method, reason)
    return meter
