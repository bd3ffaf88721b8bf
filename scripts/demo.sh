#!/usr/bin/env bash
# The main job on the embedded default: no Docker, no external service.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec uv run --frozen market demo "$@"
