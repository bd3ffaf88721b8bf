"""Message models: valid samples round-trip, and every rule rejects what it should."""

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from protocol.errors import MalformedMessageError
from protocol.messages import (
    ZERO_HASH,
    Attestation,
    EnergyAttribution,
    JobTicket,
    Receipt,
    new_job_id,
    output_digest,
    request_digest,
)

VECTORS = json.loads((Path(__file__).parent / "vectors.json").read_text(encoding="utf-8"))
MODELS: dict[str, type[BaseModel]] = {
    "job_ticket": JobTicket,
    "receipt": Receipt,
    "receipt_interrupted": Receipt,
    "attestation_seq0": Attestation,
    "attestation_seq1": Attestation,
}
LOWER_PROVIDER = "0x70997970c51812dc3a010c7d01b50e0d17dc79c8"
GPU = VECTORS["messages"]["attestation_seq0"]["message"]["gpus"][0]


def sample(name: str) -> dict[str, Any]:
    """A fresh, mutable copy of a valid message from the committed vectors."""
    message: dict[str, Any] = copy.deepcopy(VECTORS["messages"][name]["message"])
    return message


def changed(name: str, path: str, value: object) -> dict[str, Any]:
    """The sample with one field replaced (dotted path, list indexes as digits; "-" deletes)."""
    data = sample(name)
    *parents, leaf = path.split(".")
    target: Any = data
    for key in parents:
        target = target[int(key)] if isinstance(target, list) else target[key]
    if value == "-":
        del target[leaf]
    else:
        target[leaf] = value
    return data


@pytest.mark.parametrize("name", list(MODELS))
def test_samples_round_trip(name: str) -> None:
    model = MODELS[name]
    message = model.model_validate(sample(name))
    assert model.model_validate_json(message.model_dump_json()) == message
    assert message.model_dump(mode="json") == sample(name)


def test_messages_are_frozen() -> None:
    ticket = JobTicket.model_validate(sample("job_ticket"))
    with pytest.raises(ValidationError, match="frozen"):
        ticket.max_tokens = 1  # type: ignore[misc]


CASES: list[tuple[str, str, object, str]] = [
    ("job_ticket", "max_tokens", 0, "greater than or equal to 1"),
    ("job_ticket", "max_tokens", True, "valid integer"),
    ("job_ticket", "max_tokens", 64.0, "valid integer"),
    ("job_ticket", "max_tokens", "64", "valid integer"),
    ("job_ticket", "issued_at", -1, "greater than or equal to 0"),
    ("job_ticket", "expires_at", 2**53, "less than or equal to"),
    ("job_ticket", "expires_at", 1_767_225_600_000, "expires_at must be after issued_at"),
    ("job_ticket", "job_id", "0123456789ABCDEF0123456789ABCDEF", "pattern"),
    ("job_ticket", "job_id", "01234567-89ab-cdef-0123-456789abcdef", "pattern"),
    ("job_ticket", "provider", LOWER_PROVIDER, "EIP-55 checksummed: 0x70997970C518"),
    ("job_ticket", "provider", "0x1234", "20-byte hex address"),
    ("job_ticket", "provider", LOWER_PROVIDER[2:], "EIP-55"),
    ("job_ticket", "request_digest", "0x" + "AB" * 32, "pattern"),
    ("job_ticket", "request_digest", "0x" + "ab" * 31, "pattern"),
    ("job_ticket", "request_digest", "0x" + "ab" * 32 + "\n", "pattern"),
    ("job_ticket", "model", "", "at least 1 character"),
    ("job_ticket", "model", "m" * 257, "at most 256 characters"),
    ("job_ticket", "type", "receipt", "'job_ticket'"),
    ("job_ticket", "version", 2, "Input should be 1"),
    ("job_ticket", "version", True, "version must be the integer 1"),
    ("job_ticket", "version", 1.0, "version must be the integer 1"),
    ("job_ticket", "buyer", "alice", "Extra inputs are not permitted"),
    ("job_ticket", "model", "-", "Field required"),
    ("job_ticket", "domain.chain_id", 0, "greater than or equal to 1"),
    ("job_ticket", "domain.settlement_contract", LOWER_PROVIDER, "EIP-55"),
    ("job_ticket", "domain.name", "x", "Extra inputs"),
    ("receipt", "energy.method", "guessed", "'measured', 'estimated' or 'unmeasured'"),
    ("receipt", "energy.millijoules", 1.5, "valid integer"),
    ("receipt", "energy.basis", None, "estimated energy needs a basis"),
    ("receipt", "energy.millijoules", None, "estimated energy needs millijoules"),
    ("receipt", "completion_tokens", 0, "first_token_at is null exactly when"),
    ("receipt", "first_token_at", None, "first_token_at is null exactly when"),
    ("receipt", "finished_at", 1_767_225_600_249, "finished_at must not be before"),
    ("receipt", "attestation_seq", -1, "greater than or equal to 0"),
    ("receipt", "output_digest", "0x" + "zz" * 32, "pattern"),
    ("receipt", "ticket_digest", ZERO_HASH[:-1], "pattern"),
    ("receipt", "status", "-", "Field required"),
    ("receipt", "interrupted_reason", "-", "Field required"),
    ("receipt", "status", "partial", "'complete' or 'interrupted'"),
    ("receipt", "status", "interrupted", "an interrupted receipt needs interrupted_reason"),
    ("receipt", "interrupted_reason", "engine_died", "a complete receipt must have"),
    ("receipt_interrupted", "interrupted_reason", None, "needs interrupted_reason"),
    ("receipt_interrupted", "interrupted_reason", "Engine died", "pattern"),
    ("receipt_interrupted", "interrupted_reason", "", "pattern"),
    ("receipt_interrupted", "interrupted_reason", "x" * 65, "pattern"),
    ("receipt_interrupted", "interrupted_reason", 1, "valid string"),
    ("receipt_interrupted", "status", "complete", "a complete receipt must have"),
    ("attestation_seq0", "window_end", 1_767_225_540_000, "window_end must be after"),
    ("attestation_seq0", "prev_hash", "0x" + "11" * 32, "prev_hash is all zeros exactly"),
    ("attestation_seq1", "prev_hash", ZERO_HASH, "prev_hash is all zeros exactly"),
    ("attestation_seq0", "gpus", [GPU, GPU], "GPU uuids must be unique"),
    ("attestation_seq0", "gpus", [], "measured attestation needs every GPU's energy"),
    ("attestation_seq0", "gpus", [GPU] * 65, "at most 64"),
    ("attestation_seq0", "energy_method", "unmeasured", "must have null GPU energy"),
    ("attestation_seq0", "energy_method", "estimated", "estimated energy needs energy_basis"),
    ("attestation_seq0", "gpus.0.energy_mj_end", None, "both set or both null"),
    ("attestation_seq0", "gpus.0.energy_mj_end", 999_999_999, "energy counter went backwards"),
    ("attestation_seq0", "gpus.0.avg_power_mw", 350_000.0, "valid integer"),
    ("attestation_seq0", "tokens.prompt_tokens_end", 999, "prompt token counter went back"),
    ("attestation_seq0", "tokens.generation_tokens_end", 1, "generation token counter went"),
    ("attestation_seq0", "avg_running_requests_milli", 12.5, "valid integer"),
    ("attestation_seq0", "seq", False, "valid integer"),
]


@pytest.mark.parametrize(("name", "path", "value", "error"), CASES)
def test_invalid_field_is_rejected(name: str, path: str, value: object, error: str) -> None:
    with pytest.raises(ValidationError, match=error):
        MODELS[name].model_validate(changed(name, path, value))


def test_mixed_gpu_readings_are_rejected() -> None:
    data = sample("attestation_seq0")
    blind = dict(GPU, uuid="GPU-other", energy_mj_start=None, energy_mj_end=None)
    data["gpus"] = [GPU, blind]
    with pytest.raises(ValidationError, match="needs every GPU's energy"):
        Attestation.model_validate(data)


def test_unmeasured_cpu_only_attestation_is_valid() -> None:
    data = sample("attestation_seq0")
    data.update(gpus=[], driver_version=None, energy_method="unmeasured", energy_basis=None)
    assert Attestation.model_validate(data).gpus == ()


def test_interrupted_receipt_needs_a_delivered_token() -> None:
    data = sample("receipt_interrupted")
    data.update(completion_tokens=0, first_token_at=None, output_digest=output_digest([]))
    with pytest.raises(ValidationError, match="at least one delivered token"):
        Receipt.model_validate(data)


def test_interrupted_receipt_is_signed_with_its_status() -> None:
    interrupted = Receipt.model_validate(sample("receipt_interrupted"))
    assert interrupted.status == "interrupted"
    assert interrupted.interrupted_reason == "engine_died"
    complete = Receipt.model_validate(sample("receipt"))
    canonical = VECTORS["messages"]["receipt"]["canonical"]
    assert complete.status == "complete"
    assert '"interrupted_reason":null' in canonical
    assert '"status":"complete"' in canonical


def test_receipt_without_output_has_no_first_token() -> None:
    data = sample("receipt")
    data.update(completion_tokens=0, first_token_at=None, output_digest=output_digest([]))
    data["energy"] = {"method": "unmeasured", "millijoules": None, "basis": "NVML absent"}
    receipt = Receipt.model_validate(data)
    assert receipt.first_token_at is None
    assert receipt.energy.millijoules is None


@pytest.mark.parametrize(
    ("method", "millijoules", "basis", "error"),
    [
        ("unmeasured", 1, None, "unmeasured energy must have millijoules null"),
        ("measured", None, None, "measured energy needs millijoules"),
        ("estimated", 5, None, "estimated energy needs a basis"),
    ],
)
def test_energy_attribution_rules(
    method: str, millijoules: int | None, basis: str | None, error: str
) -> None:
    with pytest.raises(ValidationError, match=error):
        EnergyAttribution.model_validate(
            {"method": method, "millijoules": millijoules, "basis": basis}
        )


def test_energy_attribution_valid_forms() -> None:
    assert EnergyAttribution(method="measured", millijoules=0).basis is None
    assert EnergyAttribution(method="unmeasured").millijoules is None
    assert EnergyAttribution(method="estimated", millijoules=7, basis="TDP").millijoules == 7


def test_output_digest_is_sha256_of_little_endian_uint32() -> None:
    expected = "0x" + hashlib.sha256(b"\x01\x00\x00\x00\xff\xff\xff\xff").hexdigest()
    assert output_digest([1, 2**32 - 1]) == expected
    assert output_digest([]) == "0xe3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


@pytest.mark.parametrize("bad", [[-1], [2**32], [1.5]])
def test_output_digest_rejects_non_uint32(bad: list[int]) -> None:
    with pytest.raises(MalformedMessageError, match="uint32"):
        output_digest(bad)


def test_request_digest_and_job_ids() -> None:
    assert request_digest(b"{}") == (
        "0x44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
    )
    first, second = new_job_id(), new_job_id()
    assert first != second
    JobTicket.model_validate(changed("job_ticket", "job_id", first))
