"""The app starts on the embedded default and reports its dependencies' health."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from market.app import create_app
from market.config import Settings
from market.db import migrate


def test_health_and_metrics_on_the_embedded_default(tmp_path: Path) -> None:
    settings = Settings(database_url=f"sqlite:///{tmp_path}/market.sqlite3", var_dir=tmp_path)
    migrate(settings.database_url)
    with TestClient(create_app(settings)) as client:
        health = client.get("/health")
        assert health.status_code == 200
        body = health.json()
        assert body["ok"] is True
        assert set(body["checks"]) == {"database", "broker", "chain"}
        assert body["checks"]["chain"]["settlement"].startswith("0x")
        assert client.get("/metrics").status_code == 200
        info = client.get("/market").json()
        assert info["settlement_contract"] == body["checks"]["chain"]["settlement"]
        assert info["ticket_public_key"].startswith("0x")
        assert len(info["ticket_public_key"]) == 66


def test_health_names_a_failing_broker(tmp_path: Path) -> None:
    settings = Settings(
        database_url=f"sqlite:///{tmp_path}/market.sqlite3",
        var_dir=tmp_path,
        broker_url="redis://127.0.0.1:9/0",
    )
    migrate(settings.database_url)
    with TestClient(create_app(settings)) as client:
        health = client.get("/health")
        assert health.status_code == 503
        assert health.json()["checks"]["broker"]["ok"] is False
        assert health.json()["checks"]["database"]["ok"] is True
