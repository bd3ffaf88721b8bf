"""Fixtures shared by the agent's CLI suites."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from provider_agent import cli

PASSPHRASE = "correct horse battery staple"


@pytest.fixture
def agent_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No AGENT_* variables but a data dir in tmp_path and the passphrase; wide output."""
    for name in list(os.environ):
        if name.startswith("AGENT_"):
            monkeypatch.delenv(name)
    data_dir = tmp_path / "agent"
    monkeypatch.setenv("AGENT_DATA_DIR", str(data_dir))
    monkeypatch.setenv("AGENT_PASSPHRASE", PASSPHRASE)
    monkeypatch.setattr(cli.console, "width", 400)
    monkeypatch.setattr(cli.errors, "width", 400)
    return data_dir
