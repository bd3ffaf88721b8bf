"""`register`, `rotate-key`, `doctor` and `status` against contracts deployed on the session's
anvil."""

from __future__ import annotations

import dataclasses
import socket
from pathlib import Path

import pytest
from eth_account.signers.local import LocalAccount
from nacl.signing import SigningKey
from typer.testing import CliRunner

from protocol.canonical import from_hex, signing_input
from protocol.chain.connection import connect, fund_from_dev_account, new_account
from protocol.chain.deploy import Deployment, DeployParams, deploy
from protocol.chain.settlement import SettlementClient
from protocol.chain.transactor import Transactor
from protocol.keys import (
    TEST_KDF,
    ProviderIdentity,
    load_keystore,
    stage_rotation,
    staged_keystore_path,
    verify_key_from_hex,
)
from provider_agent import cli
from tests.provider_agent.cli.conftest import MODEL, Services, init_agent
from tests.provider_agent.conftest import PASSPHRASE

pytestmark = pytest.mark.anvil

GAS_MONEY = 10**19
MIN_STAKE = 100 * 10**18
PARAMS = DeployParams(min_provider_stake=MIN_STAKE, faucet_enabled=True)


@dataclasses.dataclass
class Chain:
    """A fresh deployment on anvil, its admin, and the file the agent reads."""

    client: SettlementClient
    admin: Transactor
    deployment_file: Path


@pytest.fixture
def chain(anvil_url: str, tmp_path: Path) -> Chain:
    """Fresh contracts on the session's anvil, recorded in a deployment file."""
    w3 = connect(anvil_url)
    admin_account: LocalAccount = new_account()
    fund_from_dev_account(w3, admin_account.address, GAS_MONEY)
    admin = Transactor(w3, admin_account)
    deployment = deploy(admin, PARAMS)
    path = tmp_path / "deployment.json"
    deployment.save(path)
    return Chain(SettlementClient(w3, deployment), admin, path)


@pytest.fixture
def agent(
    runner: CliRunner,
    agent_env: Path,
    services: Services,
    chain: Chain,
    anvil_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> ProviderIdentity:
    """An initialised agent configured for the chain, the local vLLM stand-in and market."""
    monkeypatch.setenv("AGENT_CHAIN_RPC_URL", anvil_url)
    monkeypatch.setenv("AGENT_DEPLOYMENT_FILE", str(chain.deployment_file))
    monkeypatch.setenv("AGENT_VLLM__URL", services.url)
    monkeypatch.setenv("AGENT_VLLM__SERVED_MODEL", MODEL)
    monkeypatch.setenv("AGENT_MARKET_URL", services.url)
    # the market refuses "auto" prices, so `register` needs integers (or a calibration)
    monkeypatch.setenv("AGENT_OFFER__PRICE_IN_PER_MTOK", "150000")
    monkeypatch.setenv("AGENT_OFFER__PRICE_OUT_PER_MTOK", "600000")
    init_agent(runner)
    return load_keystore(agent_env / "keystore.json", PASSPHRASE)


def _fund(chain: Chain, identity: ProviderIdentity, network: int = MIN_STAKE) -> None:
    fund_from_dev_account(chain.client.w3, identity.address, GAS_MONEY)
    chain.client.transfer_network(chain.admin, identity.address, network)


def test_register_binds_stakes_and_signs_for_the_market(
    runner: CliRunner, agent: ProviderIdentity, chain: Chain, services: Services
) -> None:
    _fund(chain, agent)

    result = runner.invoke(cli.app, ["register"])

    assert result.exit_code == 0, result.output
    assert f"bound {agent.public_key_hex} to {agent.address}" in result.stdout
    assert "staked 100 network tokens" in result.stdout
    assert "(404): skipped" in result.stdout
    assert chain.client.provider_key(agent.address).hex() == agent.public_key_hex[2:]
    assert chain.client.is_active_provider(agent.address)
    [(path, envelope)] = services.posted
    assert path == "/providers/register"
    message = envelope["message"]
    assert message["provider"] == agent.address
    assert message["domain"]["chain_id"] == chain.client.deployment.chain_id
    verify_key_from_hex(envelope["signer"]).verify(
        signing_input("provider_registration", message), from_hex(envelope["signature"], 64)
    )


def test_register_twice_skips_what_is_done(
    runner: CliRunner, agent: ProviderIdentity, chain: Chain
) -> None:
    _fund(chain, agent)
    assert runner.invoke(cli.app, ["register"]).exit_code == 0

    result = runner.invoke(cli.app, ["register"])

    assert result.exit_code == 0, result.output
    assert "key already bound" in result.stdout
    assert "staked, target 100 network tokens: skipped" in result.stdout


def test_register_stakes_up_to_the_amount_asked(
    runner: CliRunner, agent: ProviderIdentity, chain: Chain
) -> None:
    _fund(chain, agent, network=3 * MIN_STAKE)

    result = runner.invoke(cli.app, ["register", "--stake", str(2 * MIN_STAKE)])

    assert result.exit_code == 0, result.output
    assert chain.client.stake_of(agent.address) == 2 * MIN_STAKE


def test_register_without_gas_money_says_so(runner: CliRunner, agent: ProviderIdentity) -> None:
    result = runner.invoke(cli.app, ["register"])

    assert result.exit_code == 1
    assert "has no gas money" in result.stderr


def test_register_without_network_tokens_says_so(
    runner: CliRunner, agent: ProviderIdentity, chain: Chain
) -> None:
    _fund(chain, agent, network=MIN_STAKE // 2)

    result = runner.invoke(cli.app, ["register"])

    assert result.exit_code == 1
    assert "holds 50 network tokens but staking needs 100 network tokens more" in result.stderr


def test_register_refuses_an_address_bound_to_another_key(
    runner: CliRunner, agent: ProviderIdentity, chain: Chain
) -> None:
    _fund(chain, agent)
    other = SigningKey.generate().verify_key.encode()
    chain.client.register_provider(Transactor(chain.client.w3, agent.eth_account), other)

    result = runner.invoke(cli.app, ["register"])

    assert result.exit_code == 1
    assert f"already bound to another key 0x{other.hex()}" in result.stderr


def _bound(chain: Chain, identity: ProviderIdentity) -> str:
    return "0x" + chain.client.provider_key(identity.address).hex()


def test_rotate_key_binds_a_new_key_and_registers_with_it(
    runner: CliRunner, agent: ProviderIdentity, chain: Chain, services: Services, agent_env: Path
) -> None:
    _fund(chain, agent)
    assert runner.invoke(cli.app, ["register"]).exit_code == 0
    services.posted.clear()

    result = runner.invoke(cli.app, ["rotate-key", "--kdf-cost", "fast"])

    assert result.exit_code == 0, result.output
    rotated = load_keystore(agent_env / "keystore.json", PASSPHRASE)
    assert rotated.address == agent.address
    assert rotated.public_key_hex != agent.public_key_hex
    assert _bound(chain, agent) == rotated.public_key_hex
    assert chain.client.is_active_provider(agent.address), "the stake stays"
    assert f"old key     {agent.public_key_hex} (void)" in result.stdout
    assert not staged_keystore_path(agent_env / "keystore.json").exists()
    [(path, envelope)] = services.posted  # registered again, signed by the new key
    assert path == "/providers/register"
    assert envelope["signer"] == rotated.public_key_hex
    assert envelope["message"]["public_key"] == rotated.public_key_hex


def test_rotate_key_finishes_an_interrupted_rotation(
    runner: CliRunner, agent: ProviderIdentity, chain: Chain, agent_env: Path
) -> None:
    _fund(chain, agent)
    assert runner.invoke(cli.app, ["register"]).exit_code == 0
    keystore = agent_env / "keystore.json"
    _, staged = stage_rotation(keystore, PASSPHRASE, kdf_cost=TEST_KDF)
    sender = Transactor(chain.client.w3, agent.eth_account)
    chain.client.rotate_provider_key(sender, staged.signing_key.verify_key.encode())
    # Interrupted here: the chain binds the staged key, the keystore still holds the old one.
    assert "rotate-key` was interrupted" in runner.invoke(cli.app, ["register"]).stderr
    doctor = runner.invoke(cli.app, ["doctor"])
    assert doctor.exit_code == 1
    assert "rotate-key` was interrupted, run it again to finish it" in doctor.stdout

    result = runner.invoke(cli.app, ["rotate-key", "--kdf-cost", "fast"])

    assert result.exit_code == 0, result.output
    assert "is bound already (an interrupted rotation)" in result.stdout
    assert load_keystore(keystore, PASSPHRASE).public_key_hex == staged.public_key_hex
    assert _bound(chain, agent) == staged.public_key_hex


def test_rotate_key_refuses_what_it_cannot_do(
    runner: CliRunner,
    agent: ProviderIdentity,
    chain: Chain,
    agent_env: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    keystore = agent_env / "keystore.json"
    _fund(chain, agent)
    result = runner.invoke(cli.app, ["rotate-key", "--kdf-cost", "fast"])
    assert result.exit_code == 1
    assert "has bound no key yet, so there is none to rotate" in result.stderr
    assert load_keystore(keystore, PASSPHRASE).public_key_hex == agent.public_key_hex

    assert runner.invoke(cli.app, ["register"]).exit_code == 0
    with socket.create_server(("127.0.0.1", 0)) as server:  # the agent still serving jobs
        monkeypatch.setenv("AGENT_LISTEN__PORT", str(server.getsockname()[1]))
        result = runner.invoke(cli.app, ["rotate-key", "--kdf-cost", "fast"])
    assert result.exit_code == 1
    assert "stop the agent" in result.stderr
    assert _bound(chain, agent) == agent.public_key_hex


def test_doctor_passes_after_register(
    runner: CliRunner, agent: ProviderIdentity, chain: Chain
) -> None:
    before = runner.invoke(cli.app, ["doctor"])
    assert before.exit_code == 1
    assert "provider-agent register" in before.stdout
    _fund(chain, agent)
    assert runner.invoke(cli.app, ["register"]).exit_code == 0

    result = runner.invoke(cli.app, ["doctor"])

    assert result.exit_code == 0, result.output
    assert "fail" not in result.stdout
    assert "100 network tokens staked, minimum 100 network tokens" in result.stdout


def test_doctor_fails_on_a_deployment_for_another_chain(
    runner: CliRunner, agent: ProviderIdentity, chain: Chain
) -> None:
    deployment = Deployment.load(chain.deployment_file)
    chain.deployment_file.unlink()
    dataclasses.replace(deployment, chain_id=deployment.chain_id + 1).save(chain.deployment_file)

    result = runner.invoke(cli.app, ["doctor"])

    assert result.exit_code == 1
    assert f"differs from {deployment.chain_id + 1}" in result.stdout


def test_status_shows_the_stake(runner: CliRunner, agent: ProviderIdentity, chain: Chain) -> None:
    _fund(chain, agent)
    assert runner.invoke(cli.app, ["register"]).exit_code == 0

    result = runner.invoke(cli.app, ["status"])

    assert result.exit_code == 0, result.output
    assert agent.address in result.stdout
    assert "100 network tokens" in result.stdout
    assert "0 payment tokens" in result.stdout
    assert "healthy" in result.stdout
