"""`provider-agent model-digest`: the served weights' digest, by the documented rule."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from provider_agent import cli
from provider_agent.config import load_settings
from provider_agent.engine.digest import weights_digest


def by_hand(*files: tuple[str, bytes]) -> str:
    """docs/protocol.md's rule: per file, name, NUL, size (8 bytes LE), bytes; in that order."""
    digest = hashlib.sha256()
    for name, data in files:
        digest.update(name.encode() + b"\0" + len(data).to_bytes(8, "little") + data)
    return "0x" + digest.hexdigest()


def sharded_model(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "model-00002-of-00002.safetensors").write_bytes(b"second shard")
    (root / "model-00001-of-00002.safetensors").write_bytes(b"first shard" * 1000)
    (root / "config.json").write_text("{}")  # not a weight file
    return root


def test_a_directory_covers_its_safetensors_in_name_order(tmp_path: Path) -> None:
    model = sharded_model(tmp_path / "llama")
    expected = by_hand(
        ("model-00001-of-00002.safetensors", b"first shard" * 1000),
        ("model-00002-of-00002.safetensors", b"second shard"),
    )
    assert weights_digest(model) == expected
    # The directory's name and place do not count; a weights file's bytes do.
    assert weights_digest(sharded_model(tmp_path / "elsewhere" / "copy")) == expected
    (model / "model-00002-of-00002.safetensors").write_bytes(b"second shard!")
    assert weights_digest(model) != expected


def test_a_single_weights_file_is_digested_alone(tmp_path: Path) -> None:
    gguf = tmp_path / "gemma-3-270m-q4_k_m.gguf"
    gguf.write_bytes(b"GGUF" + bytes(range(256)) * 5000)  # more than one read chunk
    assert weights_digest(gguf) == by_hand((gguf.name, gguf.read_bytes()))


def test_the_agent_takes_the_printed_digest_as_its_model_digest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    digest = weights_digest(sharded_model(tmp_path / "m"))
    monkeypatch.setenv("AGENT_VLLM__MODEL_DIGEST", digest)
    assert load_settings().vllm.model_digest == digest


@pytest.mark.parametrize("make", ["empty directory", "missing path"])
def test_no_weights_is_a_named_error(tmp_path: Path, make: str) -> None:
    target = tmp_path / "model"
    if make == "empty directory":
        target.mkdir()
    with pytest.raises(FileNotFoundError, match=str(target)):
        weights_digest(target)


def test_the_command_prints_the_digest(runner: CliRunner, tmp_path: Path) -> None:
    model = sharded_model(tmp_path / "model")
    result = runner.invoke(cli.app, ["model-digest", str(model)])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == weights_digest(model)


def test_the_command_names_what_is_wrong(runner: CliRunner, tmp_path: Path) -> None:
    (tmp_path / "model").mkdir()
    result = runner.invoke(cli.app, ["model-digest", str(tmp_path / "model")])
    assert result.exit_code == 1
    said = " ".join(result.output.split())  # rich wraps at the terminal's width
    assert f"error: {tmp_path / 'model'} holds no *.safetensors file" in said
    assert "fix:" in said
