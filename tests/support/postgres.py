"""A throwaway PostgreSQL cluster for tests, and databases cloned from a migrated template.

`start_cluster()` runs Debian's `initdb` and `pg_ctl` (as the `postgres` user when we are root,
since `initdb` refuses to run as root) in a fresh directory under /tmp, on a free loopback port,
with its unix socket in that directory and trust authentication. Nothing outside that
directory is touched, and `stop()` removes it.

Run as a script it starts one and prints its URL, for trying things by hand:
    .venv/bin/python -m tests.support.postgres
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa

from market.demo.ports import free_port

POSTGRES_USER = "postgres"


class PostgresUnavailableError(RuntimeError):
    """PostgreSQL could not be started here; the message says why."""


def find_bindir() -> Path | None:
    """The directory holding initdb and pg_ctl: $PATH, else Debian's newest version."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).resolve().parent  # Debian's directory, not a link to it
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    return candidates[-1].parent if candidates else None


@dataclass
class PostgresCluster:
    """A running throwaway cluster."""

    root: Path
    port: int
    bindir: Path
    as_postgres_user: bool

    @property
    def url(self) -> str:
        """URL of the cluster's `postgres` database, for administration."""
        return f"postgresql+psycopg://{POSTGRES_USER}@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        prefix = ["runuser", "-u", POSTGRES_USER, "--"] if self.as_postgres_user else []
        return subprocess.run(
            [*prefix, *args], capture_output=True, text=True, timeout=timeout, check=False
        )

    def stop(self) -> None:
        """Stops the server and deletes its directory."""
        try:
            self._run(
                str(self.bindir / "pg_ctl"), "-D", str(self.root / "data"), "-m", "fast", "-w",
                "stop",
                timeout=60,
            )  # fmt: skip
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


def start_cluster() -> PostgresCluster:
    """Initialises and starts a cluster; `PostgresUnavailableError` if it cannot."""
    bindir = find_bindir()
    if bindir is None:
        raise PostgresUnavailableError(
            "PostgreSQL binaries not found (apt-get install -y postgresql; "
            "or set MARKET_TEST_DATABASE_URL to a server where the user may create databases)"
        )
    as_postgres_user = os.geteuid() == 0
    root = Path(tempfile.mkdtemp(prefix="market-pg-"))
    if as_postgres_user:
        try:
            shutil.chown(root, user=POSTGRES_USER, group=POSTGRES_USER)
        except (LookupError, PermissionError) as exc:
            shutil.rmtree(root, ignore_errors=True)
            raise PostgresUnavailableError(
                f"running as root and cannot hand {root} to the {POSTGRES_USER} user: {exc}"
            ) from exc
    cluster = PostgresCluster(root, free_port(), bindir, as_postgres_user)
    init = cluster._run(
        str(bindir / "initdb"), "-D", str(root / "data"), "-U", POSTGRES_USER, "-A", "trust",
        "-E", "UTF8", "--no-locale", "--no-sync",
    )  # fmt: skip
    if init.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        raise PostgresUnavailableError(f"initdb failed: {init.stderr.strip()[-2000:]}")
    options = (
        f"-p {cluster.port} -k {root} -c listen_addresses=127.0.0.1 -c max_connections=200 "
        "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
    )
    start = cluster._run(
        str(bindir / "pg_ctl"), "-D", str(root / "data"), "-l", str(root / "server.log"),
        "-o", options, "-w", "-t", "60", "start",
    )  # fmt: skip
    if start.returncode != 0:
        log = (root / "server.log").read_text() if (root / "server.log").exists() else ""
        cluster.stop()
        raise PostgresUnavailableError(
            f"pg_ctl start failed: {start.stderr.strip()[-1000:]} {log[-2000:]}"
        )
    _wait_until_ready(cluster.url)
    return cluster


def _wait_until_ready(url: str, timeout_s: float = 30) -> None:
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            try:
                with engine.connect() as conn:
                    conn.execute(sa.text("SELECT 1"))
                return
            except sa.exc.OperationalError as exc:
                if time.monotonic() > deadline:
                    raise PostgresUnavailableError(f"PostgreSQL did not answer: {exc}") from exc
                time.sleep(0.1)
    finally:
        engine.dispose()


# -- databases on a server ----------------------------------------------------------------


def database_url(server_url: str, name: str) -> str:
    """`server_url` pointing at database `name` instead."""
    return sa.make_url(server_url).set(database=name).render_as_string(hide_password=False)


def create_database(server_url: str, template: str | None = None) -> str:
    """Creates a uniquely named database (a copy of `template` if given); returns its URL."""
    name = f"market_test_{uuid.uuid4().hex[:12]}"
    clause = f' TEMPLATE "{template}"' if template else ""
    engine = sa.create_engine(server_url, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"{clause}')
    finally:
        engine.dispose()
    return database_url(server_url, name)


def drop_database(server_url: str, url: str) -> None:
    """Drops the database `url` names, closing whatever is still connected to it."""
    name = sa.make_url(url).database
    engine = sa.create_engine(server_url, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        engine.dispose()


if __name__ == "__main__":
    started = start_cluster()
    print(started.url, flush=True)
    print(f"data in {started.root}; Ctrl-C stops it and deletes it", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        started.stop()
