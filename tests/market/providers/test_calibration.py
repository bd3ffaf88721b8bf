"""`POST /providers/calibration`: the agent's signed calibration, stored and shown."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from market.providers.service import now_ms
from market.runtime import Runtime
from protocol.keys import ProviderIdentity
from protocol.messages import Domain
from provider_agent.calibrate import sign_calibration, verify_calibration
from tests.market.providers.factories import ChainProviders
from tests.market.providers.test_providers import _registered


def _level(concurrency: int, energy_mj: int | None) -> dict[str, Any]:
    tokens = 1000 * concurrency
    return {
        "concurrency": concurrency,
        "window_start_ms": 0,
        "window_end_ms": 20_000,
        "window_ns": 20_000_000_000,
        "generation_tokens": tokens,
        "prompt_tokens": 10,
        "tokens_per_s": f"{tokens / 20:.3f}",
        "energy": {
            "method": "measured" if energy_mj else "unmeasured",
            "millijoules": energy_mj,
            "duration_ns": 20_000_000_000,
            "basis": "nvml" if energy_mj else "NVML not available",
        },
        "joules_per_token": None if energy_mj is None else f"{energy_mj / 1000 / tokens:.6f}",
        "avg_power_mw": None,
        "avg_running_milli": concurrency * 1000,
        "avg_waiting_milli": 0,
        "samples": 40,
        "requests_completed": 5,
        "requests_failed": 0,
        "counters": {"gpu_start": [], "gpu_end": [], "tokens_start": {}, "tokens_end": {}},
    }


def _message(identity: ProviderIdentity, domain: Domain, issued_at: int) -> dict[str, Any]:
    return {
        "type": "calibration",
        "version": 1,
        "provider": identity.address,
        "public_key": identity.public_key_hex,
        "model": "tiny-llama",
        "model_digest": None,
        "meter": {
            "kind": "nvml",
            "method": "measured",
            "reason": None,
            "driver_version": None,
            "gpus": [],
        },
        "method": "steady_state",
        "max_tokens": 128,
        "warmup_ms": 5000,
        "duration_ms": 20000,
        "levels": [_level(1, 4_000_000), _level(4, None)],
        "issued_at": issued_at,
        "domain": {"chain_id": domain.chain_id, "settlement_contract": domain.settlement_contract},
    }


def test_calibration_is_verified_stored_and_shown(
    client: TestClient, runtime: Runtime, providers: ChainProviders
) -> None:
    identity = _registered(client, providers)
    domain = runtime.chain.domain
    envelope = sign_calibration(identity, _message(identity, domain, now_ms()))
    verify_calibration(envelope)  # what the agent itself accepts
    response = client.post("/providers/calibration", json=envelope)
    assert response.status_code == 200, response.text
    shown = client.get(f"/providers/{identity.address}").json()["calibration"]
    assert shown["model"] == "tiny-llama"
    first, second = shown["levels"]
    assert (first["concurrency"], first["joules_per_token"]) == (1, "4.000000")
    assert first["tokens_per_s"] == "50.000"
    assert second["joules_per_token"] is None
    assert second["unmeasured_reason"] == "NVML not available"

    assert client.post("/providers/calibration", json=envelope).status_code == 409  # replay

    forged = dict(envelope, message=dict(envelope["message"], model="other"))
    assert client.post("/providers/calibration", json=forged).status_code == 401

    other = ProviderIdentity.generate()
    wrong_key = sign_calibration(
        other, dict(_message(other, domain, now_ms()), provider=identity.address)
    )
    assert client.post("/providers/calibration", json=wrong_key).status_code == 401

    elsewhere = Domain(chain_id=domain.chain_id + 1, settlement_contract=domain.settlement_contract)
    wrong_domain = sign_calibration(identity, _message(identity, elsewhere, now_ms() + 1))
    assert client.post("/providers/calibration", json=wrong_domain).status_code == 403

    stale = sign_calibration(identity, _message(identity, domain, now_ms() - 2 * 3600 * 1000))
    assert client.post("/providers/calibration", json=stale).status_code == 410
