"""The market's own keys: an Ed25519 key that signs job tickets, an EVM key that settles.

From the settings (inline or a file), or, in the embedded mode only, generated once and kept
under `var_dir` so that a restart keeps them.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from eth_account import Account
from eth_account.signers.local import LocalAccount
from nacl.signing import SigningKey

from market.config import Settings


def _read_secret(inline: str | None, file: Path | None, generated: Path | None, name: str) -> str:
    if inline is not None:
        return inline.strip().removeprefix("0x")
    if file is not None:
        return file.read_text().strip().removeprefix("0x")
    if generated is None:
        raise RuntimeError(
            f"MARKET_{name.upper()} or MARKET_{name.upper()}_FILE is required outside the "
            "embedded mode"
        )
    if not generated.exists():
        generated.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(generated, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_hex(32))
    return generated.read_text().strip()


def ticket_signing_key(settings: Settings) -> SigningKey:
    """The Ed25519 key that signs job tickets."""
    inline = settings.ticket_key.get_secret_value() if settings.ticket_key else None
    generated = settings.var_dir / "ticket.key" if settings.embedded_chain else None
    seed = _read_secret(inline, settings.ticket_key_file, generated, "ticket_key")
    return SigningKey(bytes.fromhex(seed))


def operator_account(settings: Settings) -> LocalAccount:
    """The EVM account that deploys (embedded) and sends settlement transactions."""
    inline = settings.operator_key.get_secret_value() if settings.operator_key else None
    generated = settings.var_dir / "operator.key" if settings.embedded_chain else None
    key = _read_secret(inline, settings.operator_key_file, generated, "operator_key")
    account: LocalAccount = Account.from_key(bytes.fromhex(key))
    return account
