"""Ledger (accounts, transfers, postings, holds) and buyers (buyers, API keys).

Revision ID: 0001
Revises:
Create Date: 2026-11-22 16:07:49+00:00

Types are frozen here rather than imported from the app: an amount is NUMERIC(78, 0) on
PostgreSQL and a decimal string on SQLite (whose NUMERIC affinity would turn integers above
2**63 into floats); see market.db.Amount.

Besides the tables, the journal is protected in the database itself:
- transfers and postings are append-only (UPDATE and DELETE are refused), on both dialects;
- on PostgreSQL a deferred constraint trigger refuses to commit a transfer whose postings do
  not sum to zero (SQLite has no deferred triggers; the service checks before writing).
"""

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _pk() -> sa.types.TypeEngine[int]:
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _amount() -> sa.types.TypeEngine[Any]:
    return sa.Numeric(78, 0).with_variant(sa.String(79), "sqlite")


def _time() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def _enum(name: str, *values: str) -> sa.Enum:
    return sa.Enum(*values, name=name, native_enum=False, create_constraint=True, length=16)


_PG_FUNCTIONS = """
CREATE FUNCTION ledger_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP
    USING ERRCODE = 'integrity_constraint_violation';
END $$;

CREATE FUNCTION ledger_check_transfer_balanced() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  total numeric;
BEGIN
  SELECT COALESCE(SUM(amount), 0) INTO total
    FROM ledger_postings WHERE transfer_id = NEW.transfer_id;
  IF total <> 0 THEN
    RAISE EXCEPTION 'ledger transfer % is unbalanced: postings sum to %', NEW.transfer_id, total
      USING ERRCODE = 'check_violation';
  END IF;
  RETURN NULL;
END $$;
"""

_PG_TRIGGERS = [
    "CREATE TRIGGER ledger_transfers_append_only BEFORE UPDATE OR DELETE ON ledger_transfers "
    "FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change()",
    "CREATE TRIGGER ledger_postings_append_only BEFORE UPDATE OR DELETE ON ledger_postings "
    "FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change()",
    "CREATE CONSTRAINT TRIGGER ledger_postings_balanced AFTER INSERT ON ledger_postings "
    "DEFERRABLE INITIALLY DEFERRED "
    "FOR EACH ROW EXECUTE FUNCTION ledger_check_transfer_balanced()",
]

_SQLITE_TRIGGERS = [
    f"CREATE TRIGGER {table}_append_only_{op_name.lower()} BEFORE {op_name} ON {table} "
    f"BEGIN SELECT RAISE(ABORT, '{table} is append-only: {op_name} refused'); END"
    for table in ("ledger_transfers", "ledger_postings")
    for op_name in ("UPDATE", "DELETE")
]


def upgrade() -> None:
    op.create_table(
        "buyers",
        sa.Column("id", _pk(), nullable=False),
        sa.Column("address", sa.String(length=42), nullable=False),
        sa.Column("created_at", _time(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_buyers")),
        sa.UniqueConstraint("address", name=op.f("uq_buyers_address")),
    )
    op.create_table(
        "api_keys",
        sa.Column("id", _pk(), nullable=False),
        sa.Column("buyer_id", _pk(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=True),
        sa.Column("prefix", sa.String(length=32), nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", _time(), nullable=False),
        sa.Column("last_used_at", _time(), nullable=True),
        sa.Column("revoked_at", _time(), nullable=True),
        sa.ForeignKeyConstraint(
            ["buyer_id"], ["buyers.id"], name=op.f("fk_api_keys_buyer_id_buyers")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
        sa.UniqueConstraint("key_hash", name=op.f("uq_api_keys_key_hash")),
    )
    op.create_index(op.f("ix_api_keys_buyer_id"), "api_keys", ["buyer_id"])

    op.create_table(
        "ledger_accounts",
        sa.Column("id", _pk(), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column(
            "owner_kind",
            _enum("owner_kind", "buyer", "provider", "protocol", "chain"),
            nullable=False,
        ),
        sa.Column("owner", sa.String(length=64), nullable=True),
        sa.Column("bucket", sa.String(length=32), nullable=False),
        sa.Column("balance", _amount(), nullable=False),
        sa.Column("created_at", _time(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ledger_accounts")),
        sa.UniqueConstraint("name", name=op.f("uq_ledger_accounts_name")),
    )
    op.create_index(op.f("ix_ledger_accounts_owner"), "ledger_accounts", ["owner"])

    op.create_table(
        "ledger_transfers",
        sa.Column("id", _pk(), nullable=False),
        sa.Column(
            "kind",
            _enum(
                "transfer_kind",
                "deposit",
                "hold",
                "release",
                "charge",
                "fee",
                "settle",
                "withdrawal",
            ),
            nullable=False,
        ),
        sa.Column("idempotency_key", sa.String(length=200), nullable=False),
        sa.Column("job_id", sa.String(length=64), nullable=True),
        sa.Column("epoch", sa.Integer(), nullable=True),
        sa.Column("tx_hash", sa.String(length=66), nullable=True),
        sa.Column("log_index", sa.Integer(), nullable=True),
        sa.Column("created_at", _time(), nullable=False),
        sa.CheckConstraint(
            "(tx_hash IS NULL) = (log_index IS NULL)",
            name=op.f("ck_ledger_transfers_tx_hash_with_log_index"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ledger_transfers")),
        sa.UniqueConstraint("idempotency_key", name=op.f("uq_ledger_transfers_idempotency_key")),
    )
    op.create_index(op.f("ix_ledger_transfers_epoch"), "ledger_transfers", ["epoch"])
    op.create_index(op.f("ix_ledger_transfers_job_id"), "ledger_transfers", ["job_id"])
    op.create_index("ix_ledger_transfers_tx", "ledger_transfers", ["tx_hash", "log_index"])

    op.create_table(
        "ledger_postings",
        sa.Column("id", _pk(), nullable=False),
        sa.Column("transfer_id", _pk(), nullable=False),
        sa.Column("account_id", _pk(), nullable=False),
        sa.Column("amount", _amount(), nullable=False),
        sa.CheckConstraint(
            "CAST(amount AS NUMERIC) <> 0", name=op.f("ck_ledger_postings_amount_nonzero")
        ),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["ledger_accounts.id"],
            name=op.f("fk_ledger_postings_account_id_ledger_accounts"),
        ),
        sa.ForeignKeyConstraint(
            ["transfer_id"],
            ["ledger_transfers.id"],
            name=op.f("fk_ledger_postings_transfer_id_ledger_transfers"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ledger_postings")),
    )
    op.create_index("ix_ledger_postings_account_id_id", "ledger_postings", ["account_id", "id"])
    op.create_index(op.f("ix_ledger_postings_transfer_id"), "ledger_postings", ["transfer_id"])

    op.create_table(
        "ledger_holds",
        sa.Column("id", _pk(), nullable=False),
        sa.Column("job_id", sa.String(length=64), nullable=False),
        sa.Column("buyer", sa.String(length=42), nullable=False),
        sa.Column("amount", _amount(), nullable=False),
        sa.Column("status", _enum("hold_status", "open", "settled", "released"), nullable=False),
        sa.Column("provider", sa.String(length=42), nullable=True),
        sa.Column("charged", _amount(), nullable=True),
        sa.Column("fee", _amount(), nullable=True),
        sa.Column("hold_transfer_id", _pk(), nullable=False),
        sa.Column("created_at", _time(), nullable=False),
        sa.Column("closed_at", _time(), nullable=True),
        sa.CheckConstraint(
            "CAST(amount AS NUMERIC) > 0", name=op.f("ck_ledger_holds_amount_positive")
        ),
        sa.CheckConstraint(
            "charged IS NULL OR (CAST(charged AS NUMERIC) >= 0 "
            "AND CAST(charged AS NUMERIC) <= CAST(amount AS NUMERIC))",
            name=op.f("ck_ledger_holds_charged_within_amount"),
        ),
        sa.CheckConstraint(
            "fee IS NULL OR (CAST(fee AS NUMERIC) >= 0 "
            "AND CAST(fee AS NUMERIC) <= CAST(charged AS NUMERIC))",
            name=op.f("ck_ledger_holds_fee_within_charge"),
        ),
        sa.ForeignKeyConstraint(
            ["hold_transfer_id"],
            ["ledger_transfers.id"],
            name=op.f("fk_ledger_holds_hold_transfer_id_ledger_transfers"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ledger_holds")),
        sa.UniqueConstraint("job_id", name=op.f("uq_ledger_holds_job_id")),
    )
    op.create_index(op.f("ix_ledger_holds_buyer"), "ledger_holds", ["buyer"])
    op.create_index(op.f("ix_ledger_holds_status"), "ledger_holds", ["status"])

    dialect = op.get_bind().dialect.name
    if dialect == "postgresql":
        op.execute(_PG_FUNCTIONS)
        for statement in _PG_TRIGGERS:
            op.execute(statement)
    elif dialect == "sqlite":
        for statement in _SQLITE_TRIGGERS:
            op.execute(statement)


def downgrade() -> None:
    # Dropping a table drops its triggers; the PostgreSQL functions go last.
    op.drop_table("ledger_holds")
    op.drop_table("ledger_postings")
    op.drop_table("ledger_transfers")
    op.drop_table("ledger_accounts")
    op.drop_table("api_keys")
    op.drop_table("buyers")
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION ledger_check_transfer_balanced()")
        op.execute("DROP FUNCTION ledger_refuse_change()")
