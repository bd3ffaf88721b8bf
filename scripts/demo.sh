#!/usr/bin/env bash
# The main job on the embedded default: no Docker, no external service. Installs what it needs
# (the Python environment, and vLLM's CPU build in .venv-vllm: minutes the first time), then
# `market demo` sends a real request through the market, a provider agent and a real vLLM,
# settles it on the in-process chain and pays the provider out. Extra arguments go to
# `market demo` (see `uv run market demo --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh --with-vllm
exec uv run --frozen market demo "$@"
