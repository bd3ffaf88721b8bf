"""A fake OpenAI-compatible engine subprocess shared by the job-endpoint tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.provider_agent.jobs.harness import Harness
from tests.support.openai_upstream import UpstreamProcess, start_upstream


@pytest.fixture(scope="session")
def upstream() -> Iterator[UpstreamProcess]:
    """The fake engine, reset to default behaviour by `harness`."""
    process = start_upstream()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
def harness(upstream: UpstreamProcess, tmp_path: Path) -> Harness:
    """The job endpoint pointed at the fake engine, with a fixed clock."""
    upstream.control()
    return Harness(upstream.url, tmp_path / "agent")
