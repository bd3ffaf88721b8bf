#!/usr/bin/env bash
# A throwaway PostgreSQL cluster for the test suites, CI, or trying the market by hand.
# Same recipe as tests/support/postgres.py: Debian's initdb/pg_ctl (run as the postgres user
# when invoked as root, since initdb refuses root), trust authentication, loopback only, the
# unix socket inside the cluster's directory, durability off (it is for tests).
#
#   scripts/start-postgres.sh start [DIR] [PORT]   # prints export lines for the URL and DIR
#   scripts/start-postgres.sh stop DIR             # stops it and deletes DIR
#
#   eval "$(scripts/start-postgres.sh start)" && .venv/bin/pytest tests/market
# With MARKET_TEST_DATABASE_URL set, the tests use that server instead of starting their own.
set -euo pipefail

bindir() {
  if command -v initdb >/dev/null && command -v pg_ctl >/dev/null; then
    dirname "$(readlink -f "$(command -v initdb)")"  # /usr/local/bin may hold only links
    return
  fi
  local found
  found=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  if [[ -z "$found" ]]; then
    echo "PostgreSQL not found: apt-get install -y postgresql" >&2
    exit 1
  fi
  echo "$found"
}

as_pg() {
  if [[ $(id -u) -eq 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

cmd=${1:-start}
case "$cmd" in
  start)
    dir=${2:-$(mktemp -d /tmp/market-pg-XXXXXX)}
    port=${3:-$(free_port)}
    bin=$(bindir)
    mkdir -p "$dir"
    [[ $(id -u) -eq 0 ]] && chown postgres:postgres "$dir"
    as_pg "$bin/initdb" -D "$dir/data" -U postgres -A trust -E UTF8 --no-locale --no-sync >/dev/null
    as_pg "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
      -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c max_connections=200 -c fsync=off -c synchronous_commit=off -c full_page_writes=off" \
      start >/dev/null
    as_pg "$bin/createdb" -h 127.0.0.1 -p "$port" -U postgres market
    echo "export MARKET_TEST_DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1:$port/postgres"
    echo "export MARKET_POSTGRES_DIR=$dir"
    echo "# the market itself: MARKET_DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1:$port/market" >&2
    ;;
  stop)
    dir=${2:?usage: $0 stop DIR}
    as_pg "$(bindir)/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null || true
    rm -rf "$dir"
    ;;
  *)
    echo "usage: $0 start [DIR] [PORT] | stop DIR" >&2
    exit 2
    ;;
esac
