"""The migrations build exactly the models' schema, on both dialects, and undo cleanly."""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, select, text
from sqlalchemy.orm import Session

from market.db import REPO_ROOT, alembic_config, create_engine, migrate
from market.jobs.models import Receipt
from market.models import Base
from market.providers.models import Offer
from protocol.keys import public_key_hex, signing_key_from_seed
from protocol.messages import Domain, EnergyAttribution, message_digest, parse_signed, sign, verify
from protocol.messages import Receipt as SignedReceipt

BOTH = pytest.mark.parametrize("empty_database_url", ["sqlite", "postgresql"], indirect=True)

# Every table the models declare, and Alembic's own: the migrations create exactly these.
TABLES = set(Base.metadata.tables) | {"alembic_version"}


def _diff(url: str) -> list[object]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            return list(compare_metadata(context, Base.metadata))
    finally:
        engine.dispose()


def _tables(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


@BOTH
def test_upgrade_head_matches_the_models(empty_database_url: str) -> None:
    migrate(empty_database_url)
    assert _tables(empty_database_url) == TABLES
    assert _diff(empty_database_url) == []


@BOTH
def test_downgrade_base_removes_everything_and_upgrade_again_works(
    empty_database_url: str,
) -> None:
    config = alembic_config(empty_database_url)
    command.upgrade(config, "head")
    command.downgrade(config, "base")
    assert _tables(empty_database_url) <= {"alembic_version"}
    command.upgrade(config, "head")
    assert _diff(empty_database_url) == []


@BOTH
def test_models_differ_from_an_empty_database(empty_database_url: str) -> None:
    """The comparison itself can see a difference (guards against a vacuous pass)."""
    assert _diff(empty_database_url) != []


@pytest.mark.parametrize("empty_database_url", ["sqlite"], indirect=True)
def test_the_alembic_cli_takes_the_url_from_the_settings(empty_database_url: str) -> None:
    """`alembic upgrade head` from the repository root, configured by MARKET_DATABASE_URL."""
    env = {**os.environ, "MARKET_DATABASE_URL": empty_database_url}
    alembic = Path(sys.executable).with_name("alembic")
    done = subprocess.run(
        [str(alembic), "upgrade", "head"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert _tables(empty_database_url) == TABLES
    assert _diff(empty_database_url) == []


def test_offline_sql_for_postgresql_includes_the_journal_triggers(
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = alembic_config("postgresql+psycopg://nobody@127.0.0.1:1/offline")
    command.upgrade(config, "head", sql=True)
    sql = capsys.readouterr().out
    assert "NUMERIC(78, 0)" in sql
    assert "CREATE CONSTRAINT TRIGGER ledger_postings_balanced" in sql
    assert "DEFERRABLE INITIALLY DEFERRED" in sql


def _signed_receipts() -> list[tuple[str, str, str | None]]:
    """(job id, envelope JSON as providers send it, site JSON) of receipts stored before 0011."""
    key = signing_key_from_seed("0x" + "42" * 32)
    domain = Domain(
        chain_id=31337, settlement_contract="0x5FbDB2315678afecb367f032d93F642f64180aa3"
    )
    site = '{"region":"eu-west","tariff_micro_per_kwh":250000,"tariff_currency":"EUR"}'
    energies = [
        EnergyAttribution(method="measured", millijoules=180_000),
        EnergyAttribution(
            method="estimated", millijoules=9, basis="tdp × time, 1 GPU " + "b" * 200
        ),
        EnergyAttribution(method="unmeasured"),
    ]
    out = []
    for n, energy in enumerate(energies):
        interrupted = n == 1
        message = SignedReceipt(
            job_id=secrets.token_hex(16),
            provider="0x7E5F4552091A69125d5DfCb7b8C2659029395Bdf",
            model="模型/Llama-Ünïcødé" if n else "meta-llama/Llama-3.1-8B-Instruct",
            model_digest="0x" + secrets.token_hex(32),
            prompt_tokens=100 + n,
            completion_tokens=0 if n == 2 else 64,
            output_digest="0x" + secrets.token_hex(32),
            first_token_at=None if n == 2 else 1_767_225_600_040,
            finished_at=1_767_225_600_900,
            energy=energy,
            attestation_seq=None if n == 2 else 7,
            ticket_digest="0x" + secrets.token_hex(32),
            status="interrupted" if interrupted else "complete",
            interrupted_reason="engine_died" if interrupted else None,
            domain=domain,
        )
        out.append((message.job_id, sign(message, key).model_dump_json(), None if n == 2 else site))
    return out


@BOTH
def test_receipts_stored_before_0011_survive_upgrade_and_downgrade(
    empty_database_url: str,
) -> None:
    """0011 packs each envelope into columns and back: signed bytes, hash and JSON unchanged."""
    config = alembic_config(empty_database_url)
    command.upgrade(config, "0010")
    stored = _signed_receipts()
    now = datetime.now(UTC)
    engine = create_engine(empty_database_url)
    try:
        with engine.begin() as conn:
            for job_id, envelope, site in stored:
                message = parse_signed(envelope, SignedReceipt).message
                conn.execute(
                    text(
                        "INSERT INTO jobs (id, buyer_address, provider_address, model, stream,"
                        " status, hold_amount, price_in_per_mtok, price_out_per_mtok, created_at)"
                        " VALUES (:id, :buyer, :provider, :model, false, 'completed', 1000, 1, 1,"
                        " :now)"
                    ),
                    {
                        "id": job_id,
                        "buyer": "0x" + "b0" * 20,
                        "provider": message.provider,
                        "model": message.model,
                        "now": now,
                    },
                )
                conn.execute(
                    text(
                        "INSERT INTO receipts (job_id, provider_address, buyer_address, model,"
                        " receipt_hash, prompt_tokens, completion_tokens, charge, fee,"
                        " energy_method, energy_mj, first_token_at_ms, finished_at_ms, envelope,"
                        " verified_at, energy_site) VALUES (:id, :provider, :buyer, :model, :hash,"
                        " :pt, :ct, 10, 1, :method, :mj, :first, :finished, :envelope, :now, :site)"
                    ),
                    {
                        "id": job_id,
                        "provider": message.provider,
                        "buyer": "0x" + "b0" * 20,
                        "model": message.model,
                        "hash": message_digest(message),
                        "pt": message.prompt_tokens,
                        "ct": message.completion_tokens,
                        "method": message.energy.method,
                        "mj": message.energy.millijoules,
                        "first": message.first_token_at,
                        "finished": message.finished_at,
                        "envelope": envelope,
                        "now": now,
                        "site": site,
                    },
                )
                conn.execute(
                    text(
                        'INSERT INTO receipt_check_failures (job_id, "check", kind, reason,'
                        " created_at) VALUES (:id, 'receipt_power', 'data', 'why', :now)"
                    ),
                    {"id": job_id, "now": now},
                )
        command.upgrade(config, "head")
        assert _diff(empty_database_url) == []
        signer = public_key_hex(signing_key_from_seed("0x" + "42" * 32))
        with Session(engine) as session:
            for job_id, envelope, site in stored:
                row = session.get(Receipt, job_id)
                assert row is not None
                original = parse_signed(envelope, SignedReceipt)
                assert row.signed == original
                assert row.envelope == envelope
                assert row.energy_site == site
                assert verify(row.signed, signer, original.message.domain) == original.message
                assert message_digest(row.signed.message) == row.receipt_hash
            sites = session.execute(text("SELECT COUNT(*) FROM energy_sites")).scalar_one()
            assert sites == 1
        command.downgrade(config, "0010")
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT job_id, envelope, energy_site FROM receipts"))
            assert sorted(tuple(r) for r in rows) == sorted(stored)
            failures = conn.execute(text("SELECT job_id FROM receipt_check_failures"))
            assert sorted(r[0] for r in failures) == sorted(s[0] for s in stored)
    finally:
        engine.dispose()


@BOTH
def test_offers_stored_before_0021_have_no_context_length_and_survive_both_ways(
    empty_database_url: str,
) -> None:
    """0021 adds `provider_offers.context_length` to offers already stored: null (never a
    guess), and a downgrade keeps the offers while dropping it."""
    config = alembic_config(empty_database_url)
    command.upgrade(config, "0020")
    provider = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
    now = datetime.now(UTC)
    engine = create_engine(empty_database_url)
    try:
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO providers (address, public_key, status, reputation,"
                    " registered_at, registration_issued_at_ms) VALUES (:address, :key,"
                    " 'active', 0, :now, 1)"
                ),
                {"address": provider, "key": "0x" + "aa" * 32, "now": now},
            )
            conn.execute(
                text(
                    "INSERT INTO provider_offers (provider_address, model, price_in_per_mtok,"
                    " price_out_per_mtok, max_concurrency, pue_profile, pue_milli,"
                    " host_overhead_milli, gpu_count, job_url, updated_at) VALUES (:address,"
                    " 'tiny-llama', 100, 400, 4, 'industry_average', 1560, 1400, 1,"
                    " 'http://agent.invalid/jobs', :now)"
                ),
                {"address": provider, "now": now},
            )
        command.upgrade(config, "head")
        assert _diff(empty_database_url) == []
        with Session(engine) as session:
            offer = session.scalars(select(Offer)).one()
            assert (offer.provider_address, offer.context_length) == (provider, None)
            offer.context_length = 32_768
            session.commit()
        command.downgrade(config, "0020")
        columns = {c["name"] for c in inspect(engine).get_columns("provider_offers")}
        assert "context_length" not in columns
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT provider_address, model FROM provider_offers"))
            assert [tuple(r) for r in rows] == [(provider, "tiny-llama")]
    finally:
        engine.dispose()


def _predicate(sql: object | None) -> str:
    """A partial index's WHERE, as comparable text: no casts, brackets, spaces or case."""
    if sql is None:
        return ""
    text_ = re.sub(r"::[\w ]+", "", str(sql))
    return re.sub(r"[()\s]", "", text_).lower()


@BOTH
def test_partial_indexes_have_the_models_predicates(empty_database_url: str) -> None:
    """Autogenerate does not compare an index's WHERE: the partial indexes the migrations
    build are those the models declare, each with its predicate."""
    migrate(empty_database_url)
    engine = create_engine(empty_database_url)
    key = f"{engine.dialect.name}_where"
    try:
        built = {
            index["name"]: _predicate(index["dialect_options"].get(key))
            for table in Base.metadata.tables
            for index in inspect(engine).get_indexes(table)
            if index["dialect_options"].get(key) is not None
        }
    finally:
        engine.dispose()
    declared = {
        str(index.name): _predicate(index.dialect_options[engine.dialect.name]["where"])
        for table in Base.metadata.tables.values()
        for index in table.indexes
        if index.dialect_options[engine.dialect.name]["where"] is not None
    }
    assert built == declared
    assert built["ix_ledger_transfers_epoch"] == "epochisnotnull"
    assert built["ix_ledger_holds_open"] == "status='open'"
