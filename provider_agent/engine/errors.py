"""Exceptions raised while talking to the local vLLM engine, all under one root."""

from typing import ClassVar


class EngineError(Exception):
    """Root of every error raised by `provider_agent.engine`."""

    code: ClassVar[str] = "engine_error"


class MetricsUnavailableError(EngineError):
    """vLLM's /metrics could not be fetched (connection refused, timeout, HTTP error)."""

    code = "metrics_unavailable"


class MetricsParseError(EngineError):
    """/metrics answered, but not with the Prometheus text vLLM exports, or a counter is missing."""

    code = "metrics_parse_error"
