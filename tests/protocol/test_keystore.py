"""Ed25519 key helpers and the encrypted keystore holding both keys of a party."""

import json
import stat
from pathlib import Path

import pytest
from eth_account import Account
from nacl.pwhash import argon2id

from protocol.errors import KeystoreError, ProtocolError
from protocol.keys import (
    PRODUCTION_KDF,
    TEST_KDF,
    ProviderIdentity,
    commit_rotation,
    create_keystore,
    generate_signing_key,
    load_keystore,
    public_key_hex,
    seed_hex,
    signing_key_from_seed,
    stage_rotation,
    staged_keystore_path,
    verify_key_from_hex,
)
from protocol.messages import Domain, Receipt, sign, verify

PASSPHRASE = "correct horse battery staple ✓"


def test_seed_hex_round_trip() -> None:
    key = generate_signing_key()
    again = signing_key_from_seed(seed_hex(key))
    assert bytes(again) == bytes(key)
    assert public_key_hex(again) == public_key_hex(key.verify_key)
    assert bytes(verify_key_from_hex(public_key_hex(key))) == bytes(key.verify_key)


def test_known_seed_gives_known_public_key() -> None:
    key = signing_key_from_seed("0x" + bytes(range(32)).hex())
    assert public_key_hex(key) == (
        "0x03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8"
    )


@pytest.mark.parametrize("bad", ["", "0x1234", "00" * 32, "0x" + "AB" * 32])
def test_bad_seed_hex_is_refused(bad: str) -> None:
    with pytest.raises(KeystoreError, match="32 bytes"):
        signing_key_from_seed(bad)


def test_keystore_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "provider.json"
    created = create_keystore(path, PASSPHRASE, kdf_cost=TEST_KDF)
    loaded = load_keystore(path, PASSPHRASE)
    assert bytes(loaded.signing_key) == bytes(created.signing_key)
    assert loaded.eth_account.key == created.eth_account.key
    assert loaded.public_key_hex == created.public_key_hex
    assert loaded.address == created.address == Account.from_key(created.eth_account.key).address


def test_loaded_identity_signs_verifiable_messages(tmp_path: Path) -> None:
    path = tmp_path / "provider.json"
    create_keystore(path, PASSPHRASE, kdf_cost=TEST_KDF)
    identity = load_keystore(path, PASSPHRASE)
    vectors = json.loads((Path(__file__).parent / "vectors.json").read_text(encoding="utf-8"))
    receipt = Receipt.model_validate(
        dict(vectors["messages"]["receipt"]["message"], provider=identity.address)
    )
    envelope = sign(receipt, identity.signing_key)
    assert verify(envelope, identity.public_key_hex, receipt.domain) == receipt
    assert isinstance(receipt.domain, Domain)


def test_keystore_file_is_private(tmp_path: Path) -> None:
    path = tmp_path / "provider.json"
    create_keystore(path, PASSPHRASE, kdf_cost=TEST_KDF)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_keystore_keeps_existing_identity_and_records_its_costs(tmp_path: Path) -> None:
    identity = ProviderIdentity.generate()
    path = tmp_path / "provider.json"
    assert create_keystore(path, PASSPHRASE, kdf_cost=TEST_KDF, identity=identity) is identity
    document = json.loads(path.read_text())
    assert document["public_key"] == identity.public_key_hex
    assert document["address"] == identity.address
    assert document["ed25519"]["kdfparams"]["opslimit"] == TEST_KDF.argon2id_opslimit
    assert document["evm"]["crypto"]["kdfparams"]["n"] == TEST_KDF.scrypt_n
    assert seed_hex(identity.signing_key)[2:] not in path.read_text()
    assert identity.eth_account.key.hex().removeprefix("0x") not in path.read_text()


def test_evm_part_is_a_standard_v3_keystore(tmp_path: Path) -> None:
    path = tmp_path / "provider.json"
    identity = create_keystore(path, PASSPHRASE, kdf_cost=TEST_KDF)
    evm = json.loads(path.read_text())["evm"]
    assert evm["version"] == 3
    assert Account.decrypt(evm, PASSPHRASE) == identity.eth_account.key


def test_wrong_passphrase_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "provider.json"
    create_keystore(path, PASSPHRASE, kdf_cost=TEST_KDF)
    with pytest.raises(KeystoreError, match="wrong passphrase"):
        load_keystore(path, "not the passphrase")
    assert issubclass(KeystoreError, ProtocolError)


def test_existing_file_is_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "provider.json"
    first = create_keystore(path, PASSPHRASE, kdf_cost=TEST_KDF)
    with pytest.raises(KeystoreError, match="refusing to overwrite"):
        create_keystore(path, PASSPHRASE, kdf_cost=TEST_KDF)
    assert load_keystore(path, PASSPHRASE).address == first.address


def test_empty_passphrase_is_refused(tmp_path: Path) -> None:
    with pytest.raises(KeystoreError, match="empty passphrase"):
        create_keystore(tmp_path / "k.json", "", kdf_cost=TEST_KDF)
    assert not (tmp_path / "k.json").exists()


def test_missing_directory_is_a_keystore_error(tmp_path: Path) -> None:
    with pytest.raises(KeystoreError, match="cannot create"):
        create_keystore(tmp_path / "no" / "k.json", PASSPHRASE, kdf_cost=TEST_KDF)


def test_missing_file_is_a_keystore_error(tmp_path: Path) -> None:
    with pytest.raises(KeystoreError, match="no keystore"):
        load_keystore(tmp_path / "absent.json", PASSPHRASE)


@pytest.mark.parametrize(
    ("content", "error"),
    [
        ("not json", "cannot read"),
        ("[]", "not a joule-market-keystore"),
        ('{"format": "joule-market-keystore", "version": 2}', "unsupported keystore version"),
        ('{"format": "joule-market-keystore", "version": 1}', "damaged"),
    ],
)
def test_foreign_files_are_refused(tmp_path: Path, content: str, error: str) -> None:
    path = tmp_path / "k.json"
    path.write_text(content)
    with pytest.raises(KeystoreError, match=error):
        load_keystore(path, PASSPHRASE)


@pytest.mark.parametrize(
    ("section", "field", "value", "error"),
    [
        ("ed25519", "ciphertext", "0x" + "00" * 72, "wrong passphrase or damaged"),
        ("ed25519", "ciphertext", "zz", "damaged"),
        ("ed25519", "kdf", "scrypt", "damaged"),
        (
            "ed25519",
            "kdfparams",
            {"opslimit": 0, "memlimit": 8192, "salt": "0x" + "00" * 16},
            "damaged",
        ),
        ("", "public_key", "0x" + "11" * 32, "names keys it does not contain"),
        ("", "address", "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC", "does not contain"),
    ],
)
def test_damaged_keystores_are_refused(
    tmp_path: Path, section: str, field: str, value: object, error: str
) -> None:
    path = tmp_path / "k.json"
    create_keystore(path, PASSPHRASE, kdf_cost=TEST_KDF)
    document = json.loads(path.read_text())
    (document[section] if section else document)[field] = value
    path.write_text(json.dumps(document))
    with pytest.raises(KeystoreError, match=error):
        load_keystore(path, PASSPHRASE)


def test_production_costs_are_the_default() -> None:
    assert PRODUCTION_KDF.argon2id_opslimit >= argon2id.OPSLIMIT_MODERATE
    assert PRODUCTION_KDF.argon2id_memlimit >= argon2id.MEMLIMIT_MODERATE
    assert PRODUCTION_KDF.scrypt_n >= 2**18
    assert create_keystore.__kwdefaults__ == {"kdf_cost": PRODUCTION_KDF, "identity": None}


def test_identity_repr_shows_no_secrets() -> None:
    identity = ProviderIdentity.generate()
    text = repr(identity)
    assert identity.public_key_hex in text
    assert identity.address in text
    assert seed_hex(identity.signing_key)[2:] not in text


def test_unknown_evm_kdf_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "k.json"
    create_keystore(path, PASSPHRASE, kdf_cost=TEST_KDF)
    document = json.loads(path.read_text())
    document["evm"]["crypto"]["kdf"] = "bcrypt"
    path.write_text(json.dumps(document))
    with pytest.raises(KeystoreError, match="damaged"):
        load_keystore(path, PASSPHRASE)


def test_a_rotation_keeps_the_evm_account_and_replaces_the_ed25519_key(tmp_path: Path) -> None:
    path = tmp_path / "k.json"
    before = create_keystore(path, PASSPHRASE, kdf_cost=TEST_KDF)
    current, staged = stage_rotation(path, PASSPHRASE, kdf_cost=TEST_KDF)
    assert current.public_key_hex == before.public_key_hex
    assert staged.address == before.address
    assert staged.eth_account.key == before.eth_account.key
    assert staged.public_key_hex != before.public_key_hex
    staged_path = staged_keystore_path(path)
    assert staged_path == tmp_path / "k.json.next"
    assert stat.S_IMODE(staged_path.stat().st_mode) == 0o600
    assert load_keystore(path, PASSPHRASE).public_key_hex == before.public_key_hex  # untouched

    # Staging again (an interrupted rotation) reads the staged key back, never a third one.
    _, again = stage_rotation(path, PASSPHRASE, kdf_cost=TEST_KDF)
    assert again.public_key_hex == staged.public_key_hex

    commit_rotation(path)
    after = load_keystore(path, PASSPHRASE)
    assert (after.address, after.public_key_hex) == (before.address, staged.public_key_hex)
    assert not staged_path.exists()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_staged_keystore_of_another_account_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "k.json"
    create_keystore(path, PASSPHRASE, kdf_cost=TEST_KDF)
    create_keystore(staged_keystore_path(path), PASSPHRASE, kdf_cost=TEST_KDF)
    with pytest.raises(KeystoreError, match="another EVM account"):
        stage_rotation(path, PASSPHRASE, kdf_cost=TEST_KDF)
    with pytest.raises(KeystoreError, match="wrong passphrase"):
        stage_rotation(path, "not it", kdf_cost=TEST_KDF)


def test_committing_without_a_staged_keystore_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "k.json"
    create_keystore(path, PASSPHRASE, kdf_cost=TEST_KDF)
    with pytest.raises(KeystoreError, match="cannot put"):
        commit_rotation(path)
    assert load_keystore(path, PASSPHRASE).address  # still there
