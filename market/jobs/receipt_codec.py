"""A verified receipt in compact columns, and the signed envelope rebuilt from them.

A `Signed[Receipt]` is stored without its JSON: every field of the signed message has a
column of `market.jobs.models.Receipt` (the ones the market reads anyway, and the rest:
`version`, the three digests, `attestation_seq`, `energy_basis`, `interrupted_reason`),
the signer's key and the signature are kept as raw bytes (32 and 64), and the domain as the
id of its row in `receipt_domains` (one row per chain and settlement contract). `status` is
not stored: it is "interrupted" exactly when `interrupted_reason` is set (the message's own
rule). `unpack` gives back the same message, so its signing bytes, its digest
(`receipt_hash`) and the signature's check are those of the envelope the provider sent; the
JSON text it came in (spacing, key order) is not kept, since nothing signs it.

`pack` and `unpack` are pure; `receipt_columns` adds the ids of the receipt's domain and of
its energy site (`energy_sites`: one row per distinct site JSON), creating those rows on
first use. Ids already committed are remembered per engine, so a receipt's write usually
costs no look-up.
"""

from __future__ import annotations

import hashlib
import json
import threading
import weakref
from typing import Any, cast

from pydantic import ValidationError
from sqlalchemy import Table, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from market.jobs.models import EnergySite, ReceiptDomain
from protocol.errors import MalformedMessageError
from protocol.messages import Domain, EnergyAttribution, Receipt, Signed

SIGNED_COLUMNS = (
    "job_id",
    "provider_address",
    "model",
    "version",
    "model_digest",
    "prompt_tokens",
    "completion_tokens",
    "output_digest",
    "first_token_at_ms",
    "finished_at_ms",
    "energy_method",
    "energy_mj",
    "energy_basis",
    "attestation_seq",
    "ticket_digest",
    "interrupted_reason",
    "signer",
    "signature",
)
"""The columns `pack` fills (with `domain_id`, which `receipt_columns` adds)."""

_DOMAINS = cast(Table, ReceiptDomain.__table__)
_SITES = cast(Table, EnergySite.__table__)


def _raw(value: str) -> bytes:
    """A 0x-prefixed lowercase hex string (already validated) as bytes."""
    return bytes.fromhex(value[2:])


def _hex(value: bytes | memoryview) -> str:
    return "0x" + bytes(value).hex()


def pack(envelope: Signed[Receipt]) -> dict[str, Any]:
    """The receipt's column values (all but `domain_id`): see the module doc."""
    return pack_message(envelope.message, envelope.signer, envelope.signature)


def pack_message(message: Receipt, signer: str, signature: str) -> dict[str, Any]:
    """`pack` of a verified message with its envelope's `signer` and `signature` (hex)."""
    energy = message.energy
    return {
        "job_id": message.job_id,
        "provider_address": message.provider,
        "model": message.model,
        "version": message.version,
        "model_digest": _raw(message.model_digest),
        "prompt_tokens": message.prompt_tokens,
        "completion_tokens": message.completion_tokens,
        "output_digest": _raw(message.output_digest),
        "first_token_at_ms": message.first_token_at,
        "finished_at_ms": message.finished_at,
        "energy_method": energy.method,
        "energy_mj": energy.millijoules,
        "energy_basis": energy.basis,
        "attestation_seq": message.attestation_seq,
        "ticket_digest": _raw(message.ticket_digest),
        "interrupted_reason": message.interrupted_reason,
        "signer": _raw(signer),
        "signature": _raw(signature),
    }


def unpack(row: Any, domain: Domain) -> Signed[Receipt]:
    """The signed envelope stored in `row` (anything with `pack`'s columns as attributes),
    for `domain` (the one its `domain_id` names). `MalformedMessageError` if the columns do
    not make a valid receipt."""
    try:
        message = Receipt(
            version=row.version,
            job_id=row.job_id,
            provider=row.provider_address,
            model=row.model,
            model_digest=_hex(row.model_digest),
            prompt_tokens=row.prompt_tokens,
            completion_tokens=row.completion_tokens,
            output_digest=_hex(row.output_digest),
            first_token_at=row.first_token_at_ms,
            finished_at=row.finished_at_ms,
            energy=EnergyAttribution(
                method=row.energy_method, millijoules=row.energy_mj, basis=row.energy_basis
            ),
            attestation_seq=row.attestation_seq,
            ticket_digest=_hex(row.ticket_digest),
            status="complete" if row.interrupted_reason is None else "interrupted",
            interrupted_reason=row.interrupted_reason,
            domain=domain,
        )
        return Signed[Receipt](
            message=message, signer=_hex(row.signer), signature=_hex(row.signature)
        )
    except ValidationError as exc:
        raise MalformedMessageError(f"stored receipt {row.job_id} is not valid: {exc}") from exc


def signature_of(envelope: str | bytes) -> tuple[str, str]:
    """`signer` and `signature` of an envelope's JSON (one the caller already verified)."""
    data = json.loads(envelope)
    return str(data["signer"]), str(data["signature"])


def site_digest(site: str) -> bytes:
    """The key of a site's row in `energy_sites`: SHA-256 of its JSON text."""
    return hashlib.sha256(site.encode("utf-8")).digest()


_IDS: weakref.WeakKeyDictionary[Any, dict[tuple[str, Any], int]] = weakref.WeakKeyDictionary()
_IDS_LOCK = threading.Lock()
_INSERTED = "receipt_codec.inserted"
"""`session.info` key: the keys this session inserted (not remembered: they may roll back)."""


def _interned(session: Session, table: Table, key: dict[str, Any], extra: dict[str, Any]) -> int:
    """The id of the row of `table` whose unique columns are `key`, inserted (with `extra`)
    if missing. Safe under concurrent writers: the insert does nothing on a conflict."""
    bind = session.get_bind().engine
    cache_key = (table.name, tuple(key.values()))
    with _IDS_LOCK:
        known = _IDS.get(bind, {}).get(cache_key)
    if known is not None:
        return known
    conn = session.connection()
    where = [table.c[name] == value for name, value in key.items()]
    query = select(table.c.id).where(*where)
    found = conn.execute(query).scalar()
    inserted: set[tuple[str, Any]] = session.info.setdefault(_INSERTED, set())
    if found is None:
        dialect = conn.dialect.name
        values = {**key, **extra}
        if dialect == "postgresql":
            conn.execute(postgresql.insert(table).values(values).on_conflict_do_nothing())
        elif dialect == "sqlite":
            conn.execute(sqlite.insert(table).values(values).on_conflict_do_nothing())
        else:
            conn.execute(table.insert().values(values))
        inserted.add(cache_key)
        found = conn.execute(query).scalar_one()
    elif cache_key not in inserted:
        with _IDS_LOCK:
            _IDS.setdefault(bind, {})[cache_key] = int(found)
    return int(found)


def domain_id(session: Session, domain: Domain) -> int:
    """The id of `domain`'s row in `receipt_domains` (created on first use)."""
    key = {"chain_id": domain.chain_id, "settlement_contract": domain.settlement_contract}
    return _interned(session, _DOMAINS, key, {})


def site_id(session: Session, site: str | None) -> int | None:
    """The id of the site's row in `energy_sites` (created on first use); None for None."""
    if site is None:
        return None
    return _interned(session, _SITES, {"digest": site_digest(site)}, {"site": site})


def receipt_columns(
    session: Session, receipt: Receipt, envelope: str | bytes, site: str | None
) -> dict[str, Any]:
    """What `complete_job` stores of a verified receipt: `pack`'s columns of the message and
    of `envelope` (its JSON, for the signer and signature), the domain's and site's ids."""
    signer, signature = signature_of(envelope)
    return {
        **pack_message(receipt, signer, signature),
        "domain_id": domain_id(session, receipt.domain),
        "energy_site_id": site_id(session, site),
    }
