"""Ed25519 identity keys and the encrypted keystore that holds them beside an EVM key.

A party (provider or market) has two keys: Ed25519 signs protocol messages, secp256k1
(an EVM account) receives payouts, holds stake or sends settlement transactions. Both
live in one JSON keystore file, mode 0600, encrypted under one passphrase:

- `ed25519`: the 32-byte seed in a PyNaCl `SecretBox` (XSalsa20-Poly1305) under a key
  from argon2id; the public key is stored in clear so tools can show the identity;
- `evm`: a Web3 Secret Storage v3 object (scrypt) as `eth_account.Account.encrypt`
  writes it, so geth, Foundry's `cast` and web3.py can import the EVM key directly.

Production KDF costs are the default; tests pass `TEST_KDF`. The layout is in
docs/protocol.md.
"""

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nacl.exceptions
import nacl.utils
from eth_account import Account
from eth_account.signers.local import LocalAccount
from nacl.pwhash import argon2id
from nacl.secret import SecretBox
from nacl.signing import SigningKey, VerifyKey

from protocol.canonical import from_hex, to_hex
from protocol.errors import KeystoreError, MalformedMessageError

KEYSTORE_FORMAT = "joule-market-keystore"
KEYSTORE_VERSION = 1


@dataclass(frozen=True)
class KdfCost:
    """Work factors for the two password KDFs (argon2id for Ed25519, scrypt for EVM)."""

    argon2id_opslimit: int
    argon2id_memlimit: int
    scrypt_n: int


PRODUCTION_KDF = KdfCost(argon2id.OPSLIMIT_MODERATE, argon2id.MEMLIMIT_MODERATE, 2**18)
TEST_KDF = KdfCost(argon2id.OPSLIMIT_MIN, argon2id.MEMLIMIT_MIN, 2**4)


def generate_signing_key() -> SigningKey:
    """A fresh random Ed25519 signing key."""
    return SigningKey.generate()


def signing_key_from_seed(seed_hex: str) -> SigningKey:
    """Load an Ed25519 key from its 32-byte seed as 0x-prefixed lowercase hex."""
    try:
        return SigningKey(from_hex(seed_hex, 32))
    except MalformedMessageError as exc:
        raise KeystoreError("an Ed25519 seed is 32 bytes of 0x-prefixed lowercase hex") from exc


def seed_hex(signing_key: SigningKey) -> str:
    """The key's 32-byte seed as 0x-prefixed lowercase hex (secret: store it encrypted)."""
    return to_hex(bytes(signing_key))


def public_key_hex(key: SigningKey | VerifyKey) -> str:
    """The Ed25519 public key as the protocol writes it (the `signer` of envelopes)."""
    verify_key = key.verify_key if isinstance(key, SigningKey) else key
    return to_hex(bytes(verify_key))


def verify_key_from_hex(public_key: str) -> VerifyKey:
    """Parse an Ed25519 public key from 0x-prefixed lowercase hex."""
    return VerifyKey(from_hex(public_key, 32))


@dataclass(frozen=True, repr=False)
class ProviderIdentity:
    """The two keys of one party: Ed25519 for signing messages, an EVM account for money."""

    signing_key: SigningKey
    eth_account: LocalAccount

    @classmethod
    def generate(cls) -> "ProviderIdentity":
        """Fresh random keys of both kinds."""
        return cls(generate_signing_key(), Account.create())

    @property
    def public_key_hex(self) -> str:
        """Ed25519 public key, 0x-prefixed lowercase hex."""
        return public_key_hex(self.signing_key)

    @property
    def address(self) -> str:
        """EVM address, EIP-55 checksummed."""
        return str(self.eth_account.address)

    def __repr__(self) -> str:
        return f"ProviderIdentity(public_key={self.public_key_hex}, address={self.address})"


def create_keystore(
    path: str | os.PathLike[str],
    passphrase: str,
    *,
    kdf_cost: KdfCost = PRODUCTION_KDF,
    identity: ProviderIdentity | None = None,
) -> ProviderIdentity:
    """Write a new keystore (mode 0600, never overwriting) with `identity` or fresh keys."""
    if not passphrase:
        raise KeystoreError("refusing an empty passphrase")
    identity = identity or ProviderIdentity.generate()
    document = {
        "format": KEYSTORE_FORMAT,
        "version": KEYSTORE_VERSION,
        "public_key": identity.public_key_hex,
        "address": identity.address,
        "ed25519": _seal_seed(bytes(identity.signing_key), passphrase, kdf_cost),
        "evm": Account.encrypt(
            identity.eth_account.key, passphrase, kdf="scrypt", iterations=kdf_cost.scrypt_n
        ),
    }
    _write_private(Path(path), json.dumps(document, indent=2).encode("utf-8"))
    return identity


def load_keystore(path: str | os.PathLike[str], passphrase: str) -> ProviderIdentity:
    """Decrypt a keystore; `KeystoreError` on a missing file, wrong passphrase or damage."""
    try:
        document = json.loads(Path(path).read_bytes())
    except FileNotFoundError as exc:
        raise KeystoreError(f"no keystore at {path}") from exc
    except (OSError, ValueError) as exc:
        raise KeystoreError(f"cannot read keystore {path}: {exc}") from exc
    if not isinstance(document, dict) or document.get("format") != KEYSTORE_FORMAT:
        raise KeystoreError(f"{path} is not a {KEYSTORE_FORMAT} file")
    if document.get("version") != KEYSTORE_VERSION:
        raise KeystoreError(f"unsupported keystore version {document.get('version')!r}")
    try:
        seed = _open_seed(document["ed25519"], passphrase)
        evm_key = Account.decrypt(document["evm"], passphrase)
    except (KeyError, TypeError, ValueError, NotImplementedError, MalformedMessageError) as exc:
        raise KeystoreError(f"wrong passphrase or damaged keystore {path}") from exc
    identity = ProviderIdentity(SigningKey(seed), Account.from_key(evm_key))
    if (identity.public_key_hex, identity.address) != (
        document.get("public_key"),
        document.get("address"),
    ):
        raise KeystoreError(f"keystore {path} names keys it does not contain")
    return identity


def staged_keystore_path(path: str | os.PathLike[str]) -> Path:
    """Where a rotation keeps the next keystore until the chain binds its key."""
    path = Path(path)
    return path.with_name(path.name + ".next")


def stage_rotation(
    path: str | os.PathLike[str], passphrase: str, *, kdf_cost: KdfCost = PRODUCTION_KDF
) -> tuple[ProviderIdentity, ProviderIdentity]:
    """The keystore's identity and the next one: the same EVM account with a fresh Ed25519
    key, written to `staged_keystore_path(path)` (mode 0600) under the same passphrase.

    A staged keystore left by an interrupted rotation is read back instead of replaced, since
    its key may already be bound on-chain; one that holds another EVM account is refused.
    `commit_rotation` then puts it in place of the keystore."""
    current = load_keystore(path, passphrase)
    staged = staged_keystore_path(path)
    if staged.exists():
        pending = load_keystore(staged, passphrase)
        if pending.address != current.address:
            raise KeystoreError(f"{staged} holds another EVM account than {path}; remove it")
        return current, pending
    fresh = ProviderIdentity(generate_signing_key(), current.eth_account)
    return current, create_keystore(staged, passphrase, kdf_cost=kdf_cost, identity=fresh)


def commit_rotation(path: str | os.PathLike[str]) -> None:
    """Replaces the keystore with the staged one, atomically (the old Ed25519 seed is gone:
    call it only once the chain binds the staged key)."""
    path = Path(path)
    staged = staged_keystore_path(path)
    try:
        os.replace(staged, path)
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    except OSError as exc:
        raise KeystoreError(f"cannot put {staged} in place of {path}: {exc}") from exc


def _seal_seed(seed: bytes, passphrase: str, cost: KdfCost) -> dict[str, Any]:
    salt = nacl.utils.random(argon2id.SALTBYTES)
    key = argon2id.kdf(
        SecretBox.KEY_SIZE,
        passphrase.encode("utf-8"),
        salt,
        opslimit=cost.argon2id_opslimit,
        memlimit=cost.argon2id_memlimit,
    )
    return {
        "kdf": "argon2id",
        "kdfparams": {
            "opslimit": cost.argon2id_opslimit,
            "memlimit": cost.argon2id_memlimit,
            "salt": to_hex(salt),
        },
        "cipher": "xsalsa20-poly1305",
        "ciphertext": to_hex(bytes(SecretBox(key).encrypt(seed))),
    }


def _open_seed(sealed: dict[str, Any], passphrase: str) -> bytes:
    """Decrypt the Ed25519 seed; every failure surfaces as ValueError for the caller."""
    params = sealed["kdfparams"]
    if sealed["kdf"] != "argon2id" or sealed["cipher"] != "xsalsa20-poly1305":
        raise ValueError("unknown kdf or cipher")
    opslimit, memlimit = params["opslimit"], params["memlimit"]
    if not argon2id.OPSLIMIT_MIN <= opslimit <= argon2id.OPSLIMIT_MAX:
        raise ValueError("argon2id opslimit out of range")
    if not argon2id.MEMLIMIT_MIN <= memlimit <= argon2id.MEMLIMIT_MAX:
        raise ValueError("argon2id memlimit out of range")
    salt = from_hex(params["salt"], argon2id.SALTBYTES)
    ciphertext = bytes.fromhex(sealed["ciphertext"].removeprefix("0x"))
    key = argon2id.kdf(
        SecretBox.KEY_SIZE, passphrase.encode("utf-8"), salt, opslimit=opslimit, memlimit=memlimit
    )
    try:
        seed = SecretBox(key).decrypt(ciphertext)
    except nacl.exceptions.CryptoError as exc:
        raise ValueError("seed does not decrypt") from exc
    if len(seed) != 32:
        raise ValueError("seed is not 32 bytes")
    return seed


def _write_private(path: Path, data: bytes) -> None:
    """Create `path` with mode 0600 and write `data`; never replace an existing file."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as exc:
        raise KeystoreError(f"{path} exists; refusing to overwrite a keystore") from exc
    except OSError as exc:
        raise KeystoreError(f"cannot create keystore {path}: {exc}") from exc
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), 0o600)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        path.unlink(missing_ok=True)
        raise
