#!/usr/bin/env bash
# The project's whole test run: lint and types, contracts (build, artifact check, forge tests
# with fuzz and invariants, gas report), the compose file, and the pytest suites on real
# PostgreSQL, Redis, anvil and vLLM. CI runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }

bash scripts/bootstrap.sh --with-vllm

say "ruff"
uv run --frozen ruff check .
uv run --frozen ruff format --check .
say "mypy"
uv run --frozen mypy

say "forge build and shipped-artifact check"
(cd contracts && node_modules/.bin/forge build --quiet)
uv run --frozen python contracts/script/export_artifacts.py --check
say "forge test (unit, fuzz, invariant)"
(cd contracts && FOUNDRY_PROFILE=ci node_modules/.bin/forge test)
if [[ -f contracts/script/gas-report.sh ]]; then
  say "gas report: one epoch settlement by number of buyers and providers"
  bash contracts/script/gas-report.sh
fi

say "docker-compose config (default services, and the cpu and gpu profiles)"
docker-compose -f docker-compose.yml config --quiet
docker-compose -f docker-compose.yml --profile cpu config --quiet
docker-compose -f docker-compose.yml --profile gpu config --quiet
for script in scripts/testnet/*.sh; do sh -n "$script"; done
bash -n scripts/testnet.sh

say "pytest (tests/e2e starts the native testnet: scripts/testnet/stack.py)"
uv run --frozen pytest "$@"
