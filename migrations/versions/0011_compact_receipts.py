"""Compact receipts: the signed envelope in columns and raw bytes, domains and sites once each.

Upgrade packs each stored receipt's envelope (JSON text) into the receipt's columns, as
`market.jobs.receipt_codec.pack` does: `version`, `attestation_seq`, `energy_basis`,
`interrupted_reason` as they are, the three digests, the signer's key and the signature as
raw bytes, the domain as a row of `receipt_domains`, and the energy site JSON as a row of
`energy_sites` named by id; then drops `envelope` and `energy_site`. A receipt whose envelope
would not come back field for field is refused (the upgrade stops, naming the job), so nothing
a dispute needs is lost. Downgrade rebuilds the envelope's JSON (the form providers send,
`Signed.model_dump_json`) and the site text.

The conversion runs in Python on a live connection. Offline (`--sql`) output can only convert
an empty `receipts` table: on PostgreSQL it stops with an error if there are rows.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-08 12:00:00+00:00
"""

import hashlib
import json
from collections.abc import Iterator, Sequence
from typing import Any

import sqlalchemy as sa
from alembic import context, op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CHUNK = 1_000


def _new() -> tuple[sa.Column[Any], ...]:
    """The columns 0011 adds to `receipts` (nullable until filled)."""
    return (
        sa.Column("version", sa.SmallInteger(), nullable=True),
        sa.Column("model_digest", sa.LargeBinary(length=32), nullable=True),
        sa.Column("output_digest", sa.LargeBinary(length=32), nullable=True),
        sa.Column("ticket_digest", sa.LargeBinary(length=32), nullable=True),
        sa.Column("energy_basis", sa.String(length=256), nullable=True),
        sa.Column("attestation_seq", sa.BigInteger(), nullable=True),
        sa.Column("interrupted_reason", sa.String(length=64), nullable=True),
        sa.Column("signer", sa.LargeBinary(length=32), nullable=True),
        sa.Column("signature", sa.LargeBinary(length=64), nullable=True),
        sa.Column("domain_id", sa.Integer(), nullable=True),
        sa.Column("energy_site_id", sa.Integer(), nullable=True),
    )


_REQUIRED = (
    ("version", sa.SmallInteger()),
    ("model_digest", sa.LargeBinary(length=32)),
    ("output_digest", sa.LargeBinary(length=32)),
    ("ticket_digest", sa.LargeBinary(length=32)),
    ("signer", sa.LargeBinary(length=32)),
    ("signature", sa.LargeBinary(length=64)),
    ("domain_id", sa.Integer()),
)
_MESSAGE_KEYS = (
    "type",
    "version",
    "job_id",
    "provider",
    "model",
    "model_digest",
    "prompt_tokens",
    "completion_tokens",
    "output_digest",
    "first_token_at",
    "finished_at",
    "energy",
    "attestation_seq",
    "ticket_digest",
    "status",
    "interrupted_reason",
    "domain",
)
"""`protocol.messages.Receipt`'s fields in declaration order (the order of its JSON)."""


def _raw(value: str) -> bytes:
    return bytes.fromhex(value[2:])


def _hex(value: bytes | memoryview) -> str:
    return "0x" + bytes(value).hex()


def _envelope_json(row: Any) -> str:
    """The envelope as `Signed[Receipt].model_dump_json()` writes it, from 0011's columns."""
    message = {
        "type": "receipt",
        "version": row.version,
        "job_id": row.job_id,
        "provider": row.provider_address,
        "model": row.model,
        "model_digest": _hex(row.model_digest),
        "prompt_tokens": row.prompt_tokens,
        "completion_tokens": row.completion_tokens,
        "output_digest": _hex(row.output_digest),
        "first_token_at": row.first_token_at_ms,
        "finished_at": row.finished_at_ms,
        "energy": {
            "method": row.energy_method,
            "millijoules": row.energy_mj,
            "basis": row.energy_basis,
        },
        "attestation_seq": row.attestation_seq,
        "ticket_digest": _hex(row.ticket_digest),
        "status": "complete" if row.interrupted_reason is None else "interrupted",
        "interrupted_reason": row.interrupted_reason,
        "domain": {"chain_id": row.chain_id, "settlement_contract": row.settlement_contract},
    }
    envelope = {"message": message, "signer": _hex(row.signer), "signature": _hex(row.signature)}
    return json.dumps(envelope, ensure_ascii=False, separators=(",", ":"))


class _Packed:
    """0011's columns of one receipt, as attributes (what `_envelope_json` reads)."""

    def __init__(self, values: dict[str, Any]) -> None:
        self.__dict__.update(values)


def _pack(job_id: str, text: str) -> tuple[dict[str, Any], tuple[int, str]]:
    """0011's columns of a stored envelope (all but the ids), and its domain."""
    data = json.loads(text)
    message = data["message"]
    energy = message["energy"]
    domain = message["domain"]
    values = {
        "provider_address": message["provider"],
        "model": message["model"],
        "prompt_tokens": message["prompt_tokens"],
        "completion_tokens": message["completion_tokens"],
        "first_token_at_ms": message["first_token_at"],
        "finished_at_ms": message["finished_at"],
        "energy_method": energy["method"],
        "energy_mj": energy.get("millijoules"),
        "energy_basis": energy.get("basis"),
        "version": message.get("version", 1),
        "model_digest": _raw(message["model_digest"]),
        "output_digest": _raw(message["output_digest"]),
        "ticket_digest": _raw(message["ticket_digest"]),
        "attestation_seq": message["attestation_seq"],
        "interrupted_reason": message["interrupted_reason"],
        "signer": _raw(data["signer"]),
        "signature": _raw(data["signature"]),
    }
    rebuilt = _Packed(
        {
            **values,
            "job_id": job_id,
            "chain_id": domain["chain_id"],
            "settlement_contract": domain["settlement_contract"],
        }
    )
    # What was signed: the message with its defaults (`type`, `version`, energy's nulls).
    signed = {
        "type": "receipt",
        "version": 1,
        **message,
        "energy": {"millijoules": None, "basis": None, **energy},
    }
    rebuilt_data = json.loads(_envelope_json(rebuilt))
    if (
        set(data) != {"message", "signer", "signature"}
        or message.get("job_id") != job_id
        or rebuilt_data != {**data, "message": signed}
    ):
        raise RuntimeError(f"receipt {job_id}: its envelope does not fit 0011's columns")
    return values, (int(domain["chain_id"]), str(domain["settlement_contract"]))


def _chunks(conn: sa.Connection, query: str) -> Iterator[Sequence[sa.Row[Any]]]:
    """The rows of `query` (which pages by `:after`, ordered by job id) a chunk at a time,
    each read whole before the caller writes."""
    after = ""
    while rows := conn.execute(sa.text(query), {"after": after, "size": CHUNK}).fetchall():
        yield rows
        after = rows[-1].job_id


def _stash_check_failures() -> None:
    """SQLite recreates `receipts` to change it; with foreign keys enforced, dropping the
    old table would refuse while `receipt_check_failures` rows point at it. They wait in a
    temporary table meanwhile (ids kept)."""
    op.execute(
        "CREATE TEMP TABLE stash_receipt_check_failures AS SELECT * FROM receipt_check_failures"
    )
    op.execute("DELETE FROM receipt_check_failures")


def _unstash_check_failures() -> None:
    op.execute("INSERT INTO receipt_check_failures SELECT * FROM stash_receipt_check_failures")
    op.execute("DROP TABLE stash_receipt_check_failures")


def _convert(conn: sa.Connection) -> None:
    """Packs every receipt's envelope into the new columns; moves sites to `energy_sites`."""
    domains = sa.table(
        "receipt_domains",
        sa.column("id", sa.Integer()),
        sa.column("chain_id", sa.BigInteger()),
        sa.column("settlement_contract", sa.String()),
    )
    sites = sa.table(
        "energy_sites",
        sa.column("id", sa.Integer()),
        sa.column("digest", sa.LargeBinary()),
        sa.column("site", sa.Text()),
    )
    receipts = sa.table("receipts", *(sa.column(c.name, c.type) for c in _new()))
    for name in ("provider_address", "model", "energy_method", "job_id"):
        receipts.append_column(sa.column(name, sa.String()))
    for name in (
        "prompt_tokens",
        "completion_tokens",
        "first_token_at_ms",
        "finished_at_ms",
        "energy_mj",
    ):
        receipts.append_column(sa.column(name, sa.BigInteger()))
    update = (
        receipts.update()
        .where(receipts.c.job_id == sa.bindparam("b_job_id"))
        .values({c.name: sa.bindparam(c.name) for c in receipts.c if c.name != "job_id"})
    )
    domain_ids: dict[tuple[int, str], int] = {}
    site_ids: dict[bytes, int] = {}
    query = (
        "SELECT job_id, envelope, energy_site FROM receipts WHERE job_id > :after"
        " ORDER BY job_id LIMIT :size"
    )
    for rows in _chunks(conn, query):
        updates = []
        for row in rows:
            job_id, envelope, site = row.job_id, row.envelope, row.energy_site
            values, domain = _pack(job_id, envelope)
            if domain not in domain_ids:
                chain_id, contract = domain
                inserted = conn.execute(
                    domains.insert()
                    .values(chain_id=chain_id, settlement_contract=contract)
                    .returning(domains.c.id)
                )
                domain_ids[domain] = int(inserted.scalar_one())
            site_id = None
            if site is not None:
                digest = hashlib.sha256(site.encode("utf-8")).digest()
                if digest not in site_ids:
                    inserted = conn.execute(
                        sites.insert().values(digest=digest, site=site).returning(sites.c.id)
                    )
                    site_ids[digest] = int(inserted.scalar_one())
                site_id = site_ids[digest]
            updates.append(
                {
                    **values,
                    "b_job_id": job_id,
                    "domain_id": domain_ids[domain],
                    "energy_site_id": site_id,
                }
            )
        conn.execute(update, updates)


def _restore(conn: sa.Connection) -> None:
    """Writes each receipt's envelope JSON and site text back (downgrade)."""
    receipts = sa.table(
        "receipts",
        sa.column("job_id", sa.String()),
        sa.column("envelope", sa.Text()),
        sa.column("energy_site", sa.Text()),
    )
    update = (
        receipts.update()
        .where(receipts.c.job_id == sa.bindparam("b_job_id"))
        .values(envelope=sa.bindparam("envelope"), energy_site=sa.bindparam("energy_site"))
    )
    query = """
        SELECT r.job_id, r.provider_address, r.model, r.prompt_tokens, r.completion_tokens,
               r.first_token_at_ms, r.finished_at_ms, r.energy_method, r.energy_mj,
               r.energy_basis, r.version, r.model_digest, r.output_digest, r.ticket_digest,
               r.attestation_seq, r.interrupted_reason, r.signer, r.signature,
               d.chain_id, d.settlement_contract, s.site
        FROM receipts r
        JOIN receipt_domains d ON d.id = r.domain_id
        LEFT JOIN energy_sites s ON s.id = r.energy_site_id
        WHERE r.job_id > :after
        ORDER BY r.job_id
        LIMIT :size
    """
    for rows in _chunks(conn, query):
        values = [
            {"b_job_id": row.job_id, "envelope": _envelope_json(row), "energy_site": row.site}
            for row in rows
        ]
        conn.execute(update, values)


def _refuse_rows_offline() -> None:
    if context.get_context().dialect.name == "postgresql":
        op.execute(
            "DO $$ BEGIN IF EXISTS (SELECT 1 FROM receipts) THEN RAISE EXCEPTION "
            "'revision 0011 converts stored receipts in Python: run it online'; "
            "END IF; END $$"
        )


def upgrade() -> None:
    """Adds the tables and columns, packs every receipt, drops `envelope` and `energy_site`."""
    op.create_table(
        "receipt_domains",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("chain_id", sa.BigInteger(), nullable=False),
        sa.Column("settlement_contract", sa.String(length=42), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_receipt_domains")),
        sa.UniqueConstraint(
            "chain_id",
            "settlement_contract",
            name=op.f("uq_receipt_domains_chain_id_settlement_contract"),
        ),
    )
    op.create_table(
        "energy_sites",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("digest", sa.LargeBinary(length=32), nullable=False),
        sa.Column("site", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_energy_sites")),
        sa.UniqueConstraint("digest", name=op.f("uq_energy_sites_digest")),
    )
    for column in _new():
        op.add_column("receipts", column)
    offline = context.is_offline_mode()
    if offline:
        _refuse_rows_offline()
    else:
        _convert(op.get_bind())
    sqlite = context.get_context().dialect.name == "sqlite"
    if sqlite:
        _stash_check_failures()
    with op.batch_alter_table("receipts") as batch:
        for name, type_ in _REQUIRED:
            batch.alter_column(name, existing_type=type_, nullable=False)
        batch.create_foreign_key(
            op.f("fk_receipts_domain_id_receipt_domains"), "receipt_domains", ["domain_id"], ["id"]
        )
        batch.create_foreign_key(
            op.f("fk_receipts_energy_site_id_energy_sites"),
            "energy_sites",
            ["energy_site_id"],
            ["id"],
        )
        batch.drop_column("envelope")
        batch.drop_column("energy_site")
    if sqlite:
        _unstash_check_failures()


def downgrade() -> None:
    """Rebuilds `envelope` and `energy_site` from the columns, then drops what 0011 added."""
    op.add_column("receipts", sa.Column("envelope", sa.Text(), nullable=True))
    op.add_column("receipts", sa.Column("energy_site", sa.Text(), nullable=True))
    if context.is_offline_mode():
        _refuse_rows_offline()
    else:
        _restore(op.get_bind())
    sqlite = context.get_context().dialect.name == "sqlite"
    if sqlite:
        _stash_check_failures()
    with op.batch_alter_table("receipts") as batch:
        batch.alter_column("envelope", existing_type=sa.Text(), nullable=False)
        batch.drop_constraint(op.f("fk_receipts_energy_site_id_energy_sites"), type_="foreignkey")
        batch.drop_constraint(op.f("fk_receipts_domain_id_receipt_domains"), type_="foreignkey")
        for column in reversed(_new()):
            batch.drop_column(column.name)
    if sqlite:
        _unstash_check_failures()
    op.drop_table("energy_sites")
    op.drop_table("receipt_domains")
