"""`provider-agent init`, the passphrase, and configuration errors."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from protocol.keys import load_keystore
from provider_agent import cli
from tests.provider_agent.cli.conftest import init_agent
from tests.provider_agent.conftest import PASSPHRASE


def test_init_creates_a_private_keystore(runner: CliRunner, agent_env: Path) -> None:
    result = runner.invoke(cli.app, ["init", "--kdf-cost", "fast"])

    assert result.exit_code == 0, result.output
    path = agent_env / "keystore.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    identity = load_keystore(path, PASSPHRASE)
    assert identity.address in result.stdout
    assert identity.public_key_hex in result.stdout


def test_init_refuses_to_overwrite(runner: CliRunner, agent_env: Path) -> None:
    init_agent(runner)
    path = agent_env / "keystore.json"
    before = path.read_bytes()

    result = runner.invoke(cli.app, ["init", "--kdf-cost", "fast"])

    assert result.exit_code == 1
    assert "refusing to overwrite" in result.stderr
    assert path.read_bytes() == before


def test_init_prompts_twice_for_the_passphrase(
    runner: CliRunner, agent_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AGENT_PASSPHRASE")

    result = runner.invoke(cli.app, ["init", "--kdf-cost", "fast"], input="s3cret\ns3cret\n")

    assert result.exit_code == 0, result.output
    assert load_keystore(agent_env / "keystore.json", "s3cret").address in result.stdout


def test_init_uses_the_keystore_path_from_a_config_file(
    runner: CliRunner, agent_env: Path, tmp_path: Path
) -> None:
    keystore = tmp_path / "elsewhere" / "keys.json"
    config = tmp_path / "agent.toml"
    config.write_text(f'keystore = "{keystore}"\n')

    result = runner.invoke(cli.app, ["--config", str(config), "init", "--kdf-cost", "fast"])

    assert result.exit_code == 0, result.output
    assert json.loads(keystore.read_text())["address"] in result.stdout


def test_a_wrong_passphrase_is_named(
    runner: CliRunner, agent_env: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    init_agent(runner)
    monkeypatch.setenv("AGENT_PASSPHRASE", "not the passphrase")
    monkeypatch.setenv("AGENT_CHAIN_RPC_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AGENT_DEPLOYMENT_FILE", str(tmp_path / "deployment.json"))

    result = runner.invoke(cli.app, ["register"])

    assert result.exit_code == 1
    assert "wrong passphrase" in result.stderr
    assert "AGENT_PASSPHRASE" in result.stderr


def test_register_says_what_chain_settings_are_missing(runner: CliRunner, agent_env: Path) -> None:
    result = runner.invoke(cli.app, ["register"])

    assert result.exit_code == 2
    assert "AGENT_CHAIN_RPC_URL" in result.stderr
    assert "AGENT_DEPLOYMENT_FILE" in result.stderr


def test_the_embedded_chain_is_refused(
    runner: CliRunner, agent_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AGENT_CHAIN_RPC_URL", "embedded")

    result = runner.invoke(cli.app, ["status"])

    assert result.exit_code == 2
    assert "chain_rpc_url" in result.stderr
    assert "cannot use the embedded chain" in result.stderr


def test_init_where_the_keystore_cannot_be_written_says_so_in_one_line(
    runner: CliRunner, agent_env: Path
) -> None:
    agent_env.write_text("a file where the data dir should be")

    result = runner.invoke(cli.app, ["init", "--kdf-cost", "fast"])

    assert result.exit_code == 1
    assert f"error: cannot write the keystore {agent_env / 'keystore.json'}" in result.stderr
    assert "fix: set data_dir (AGENT_DATA_DIR)" in result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit)
