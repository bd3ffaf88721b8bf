"""Setting names: a `MARKET_*` or `AGENT_*` variable that names no setting is warned of, and
every such name the project's own files give (compose file, scripts, docs) is a setting."""

from __future__ import annotations

import logging
import re
import subprocess
from pathlib import Path

import pytest

from market.config import NOT_SETTINGS, Settings, get_settings
from protocol.env_names import env_names, unknown_env
from provider_agent.config import CONFIG_FILE_ENV, AgentSettings, load_settings, unknown_settings
from provider_agent.doctor import check_setting_names

ROOT = Path(__file__).resolve().parent.parent
_NAME = re.compile(r"\b(?:MARKET|AGENT)_[A-Z0-9_]*[A-Z0-9]\b")
_QUOTED_NAME = re.compile(r"[\"']((?:MARKET|AGENT)_[A-Z0-9_]*[A-Z0-9])[\"']")
MARKET_NAMES = env_names("MARKET_", Settings)
MISSPELT_ON_PURPOSE = {"MARKET_EPOCH_SECONDZ"}
"""The README's example of the warning."""


def _unknown(environ: dict[str, str]) -> list[str]:
    market = unknown_env(environ, "MARKET_", MARKET_NAMES, also=NOT_SETTINGS)
    return market + unknown_settings(environ)


def test_names_come_from_the_fields_and_the_groups_members() -> None:
    assert "MARKET_EPOCH_SECONDS" in MARKET_NAMES
    assert "AGENT_OFFER__REGION" in env_names("AGENT_", AgentSettings, "__")
    assert _unknown({"MARKET_EPOCH_SECONDS": "1", "AGENT_OFFER__REGION": "x"}) == []
    assert _unknown({"HOME": "/root", "MY_AGENT_X": "1"}) == []


def test_a_misspelt_market_variable_is_warned_of_with_the_setting_it_resembles(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("MARKET_EPOCH_SECONDZ", "5")
    monkeypatch.setenv("MARKET_DEPLOYER_KEY", "0x" + "11" * 32)  # read by `chain deploy`
    settings, warnings = _settings_and_warnings(caplog)
    assert settings.epoch_seconds == Settings.model_fields["epoch_seconds"].default
    assert warnings == [
        "MARKET_EPOCH_SECONDZ names no setting and is ignored; did you mean MARKET_EPOCH_SECONDS?"
    ]


def test_a_misspelt_variable_in_the_env_file_is_warned_of_too(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text(
        "MARKET_EPOCH_SECONDS=7\n"  # a setting: read
        "MARKET_CONFIRMATIONZ=3\n"  # misspelt
        "MARKET_EPOCH_SECONDZ=5\n"  # misspelt, and also in the environment: warned of once
        "OTHER=1\n"
    )
    monkeypatch.setenv("MARKET_EPOCH_SECONDZ", "5")
    settings, warnings = _settings_and_warnings(caplog)
    assert settings.epoch_seconds == 7
    assert warnings == [
        "MARKET_EPOCH_SECONDZ names no setting and is ignored; did you mean MARKET_EPOCH_SECONDS?",
        "MARKET_CONFIRMATIONZ (in .env) names no setting and is ignored; "
        "did you mean MARKET_CONFIRMATIONS?",
    ]


def _settings_and_warnings(caplog: pytest.LogCaptureFixture) -> tuple[Settings, list[str]]:
    """The market's settings as its processes read them, and the warnings that gave."""
    get_settings.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger="market.config"):
            settings = get_settings()
    finally:
        get_settings.cache_clear()
    return settings, [record.getMessage() for record in caplog.records]


def test_an_agent_variable_outside_every_group_is_warned_of_and_shown_by_doctor(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    monkeypatch.setenv("AGENT_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("AGENT_REGION", "DE")  # the offer's region is AGENT_OFFER__REGION
    monkeypatch.setenv(CONFIG_FILE_ENV, str(tmp_path / "agent.toml"))
    (tmp_path / "agent.toml").write_text("")
    with caplog.at_level(logging.WARNING, logger="provider_agent.config"):
        settings = load_settings()
    assert settings.offer.region is None
    message = "AGENT_REGION names no setting and is ignored; did you mean AGENT_OFFER__REGION?"
    assert [record.getMessage() for record in caplog.records] == [message]
    check = check_setting_names({"AGENT_REGION": "DE", "AGENT_OFFER__REGION": "DE"})
    assert (check.status, check.detail) == ("warn", message)
    assert check_setting_names({"AGENT_OFFER__REGION": "DE"}).status == "pass"


def _project_files() -> list[Path]:
    listed = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    return [
        ROOT / name
        for name in listed
        if name.endswith((".md", ".sh", ".yml", ".toml"))
        or name.startswith(("scripts/testnet/", "Dockerfile", ".ci/"))
    ]


def test_every_variable_the_compose_file_scripts_and_docs_name_is_a_setting() -> None:
    """A typo there would be ignored where it is used (the testnet's agent, an operator's
    copy of the README) and its default left in force."""
    named: dict[str, set[str]] = {}
    for path in _project_files():
        text = path.read_text()
        pattern = _QUOTED_NAME if path.suffix == ".py" else _NAME
        for name in pattern.findall(text):
            named.setdefault(name, set()).add(str(path.relative_to(ROOT)))
    assert "MARKET_DATABASE_URL" in named
    assert "AGENT_OFFER__PUBLIC_URL" in named
    unknown = _unknown(dict.fromkeys(named.keys() - MISSPELT_ON_PURPOSE, ""))
    assert unknown == [], {line: named[line.split()[0]] for line in unknown}
