"""Window energy between two readings: deltas, resets, GPU changes, other methods."""

from __future__ import annotations

from provider_agent.energy import EnergyReading, GpuReading, window_energy


def gpu(uuid: str, energy_mj: int | None) -> GpuReading:
    return GpuReading(
        uuid=uuid,
        name="NVIDIA A100-SXM4-80GB",
        energy_mj=energy_mj,
        power_mw=None,
        power_limit_mw=None,
    )


def measured(t_ns: int, *gpus: GpuReading) -> EnergyReading:
    return EnergyReading(
        method="measured", monotonic_ns=t_ns, unix_ms=1_000 + t_ns // 1_000_000, gpus=gpus
    )


def test_measured_window_per_gpu_total_and_average_power() -> None:
    start = measured(0, gpu("GPU-b", 5_000), gpu("GPU-a", 10_000))
    end = measured(3_000_000_000, gpu("GPU-a", 910_000), gpu("GPU-b", 605_001))
    window = window_energy(start, end)
    assert window.valid
    assert [(g.uuid, g.energy_mj) for g in window.gpus] == [("GPU-a", 900_000), ("GPU-b", 600_001)]
    assert window.total_mj == 1_500_001
    assert window.avg_power_mw == 500_000  # 1 500 001 mJ / 3 s, rounded half up
    assert (window.start_unix_ms, window.end_unix_ms, window.duration_ns) == (
        1_000,
        4_000,
        3_000_000_000,
    )
    assert window.basis == "NVML total-energy counter delta on 2 GPU(s) over 3.000 s"


def test_counter_going_backwards_is_invalid_not_negative() -> None:
    window = window_energy(measured(0, gpu("GPU-a", 10_000)), measured(10**9, gpu("GPU-a", 9_999)))
    assert not window.valid
    assert (window.total_mj, window.avg_power_mw, window.gpus) == (None, None, ())
    assert window.invalid_reason == "energy counter reset on GPU GPU-a (10000 mJ -> 9999 mJ)"


def test_gpu_set_change_is_invalid() -> None:
    start = measured(0, gpu("GPU-a", 1), gpu("GPU-b", 1))
    end = measured(10**9, gpu("GPU-a", 5), gpu("GPU-c", 5))
    window = window_energy(start, end)
    assert window.total_mj is None
    assert window.invalid_reason == "GPU set changed: ['GPU-a', 'GPU-b'] -> ['GPU-a', 'GPU-c']"


def test_duplicate_gpu_or_missing_counter_or_no_gpu_is_invalid() -> None:
    dup = window_energy(
        measured(0, gpu("GPU-a", 1), gpu("GPU-a", 1)), measured(10**9, gpu("GPU-a", 2))
    )
    assert dup.invalid_reason == "a reading lists the same GPU twice"
    missing = window_energy(measured(0, gpu("GPU-a", 1)), measured(10**9, gpu("GPU-a", None)))
    assert missing.invalid_reason == "no energy counter reading for GPU GPU-a"
    assert window_energy(measured(0), measured(10**9)).invalid_reason == (
        "measured readings list no GPU"
    )


def test_end_not_after_start_is_invalid() -> None:
    window = window_energy(measured(10**9, gpu("GPU-a", 1)), measured(10**9, gpu("GPU-a", 2)))
    assert window.invalid_reason == "end is not after start (0 ns)"
    assert window.total_mj is None


def test_method_change_is_invalid_and_unmeasured() -> None:
    start = measured(0, gpu("GPU-a", 1))
    end = EnergyReading(method="unmeasured", monotonic_ns=10**9, unix_ms=2_000, reason="x")
    window = window_energy(start, end)
    assert (window.method, window.total_mj) == ("unmeasured", None)
    assert window.invalid_reason == "method changed from measured to unmeasured"


def test_unmeasured_window_is_valid_with_no_energy_and_the_reason() -> None:
    reason = "NVML unavailable (library_not_found)"
    start = EnergyReading(method="unmeasured", monotonic_ns=0, unix_ms=0, reason=reason)
    end = EnergyReading(method="unmeasured", monotonic_ns=10**9, unix_ms=1_000, reason=reason)
    window = window_energy(start, end)
    assert window.valid
    assert (window.method, window.total_mj, window.avg_power_mw, window.basis) == (
        "unmeasured",
        None,
        None,
        reason,
    )


def estimated(t_ns: int, declared_mw: int) -> EnergyReading:
    return EnergyReading(
        method="estimated", monotonic_ns=t_ns, unix_ms=t_ns // 10**6, declared_power_mw=declared_mw
    )


def test_estimated_window_is_declared_power_times_time() -> None:
    window = window_energy(estimated(0, 350_000), estimated(2_000_000_000, 350_000))
    assert (window.method, window.total_mj, window.avg_power_mw) == ("estimated", 700_000, 350_000)
    assert window.basis == "declared 350 W x 2.000 s"
    odd = window_energy(estimated(0, 87_500), estimated(1_234_567_891, 87_500))
    assert odd.total_mj == 108_025  # 87.5 W x 1.234567891 s = 108 024.69 mJ
    assert odd.basis == "declared 87.5 W x 1.235 s"
    exact = window_energy(estimated(0, 1_234_567), estimated(10**9, 1_234_567))
    assert exact.basis == "declared 1234.567 W x 1.000 s"


def test_estimated_window_with_changed_declared_power_is_invalid() -> None:
    window = window_energy(estimated(0, 350_000), estimated(10**9, 300_000))
    assert window.total_mj is None
    assert window.invalid_reason == "declared power changed (350000 mW to 300000 mW)"
