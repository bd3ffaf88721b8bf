#!/usr/bin/env bash
# Gas of Settlement.settleEpoch for N buyers paying N providers (N = 1, 10, 100).
#
# Runs the benchmark tests in test/SettlementGas.t.sol and prints, per scenario:
#   N | settleEpoch gas (measured around the call) | gas per debit+credit pair (total / N) |
#   marginal gas per pair (from the previous N) | tx estimate | calldata size
# where the tx estimate adds 21,000 and the calldata (EIP-7623) and drops the test's cold CALL.
# Scenarios:
#   steady              every account took part in the previous epoch (non-zero slots rewritten)
#   earnings-withdrawn  providers withdrew after the previous epoch (their slots stay non-zero)
#   steady+rewards      steady, plus a network-token reward minted to each provider
#
# Usage: script/gas-report.sh [--gas-report]   (from contracts/; --gas-report also prints forge's
#        per-function gas table for the same tests)
set -euo pipefail
cd "$(dirname "$0")/.."

FORGE=${FORGE:-node_modules/.bin/forge}
extra=()
if [[ "${1:-}" == "--gas-report" ]]; then
  extra+=(--gas-report)
elif [[ $# -gt 0 ]]; then
  echo "usage: $0 [--gas-report]" >&2
  exit 2
fi

out=$("$FORGE" test --match-path test/SettlementGas.t.sol -vv 2>&1) || {
  printf '%s\n' "$out" >&2
  echo "gas-report: the benchmark tests failed" >&2
  exit 1
}

printf '%s\n' "$out" | grep -o 'gas-bench|.*' | sort -t'|' -k2,2 -k3,3n | awk -F'|' '
  BEGIN {
    fmt = "%-19s %4s %16s %13s %16s %15s %15s\n"
    printf fmt, "scenario", "N", "settleEpoch gas", "gas per pair", "marginal/pair", "tx gas (est.)", "calldata bytes"
    printf fmt, "--------", "-", "---------------", "------------", "-------------", "-------------", "--------------"
  }
  {
    marginal = ($2 == scenario) ? sprintf("%d", ($4 - gas) / ($3 - n)) : "-"
    printf fmt, $2, $3, $4, $5, marginal, $6, $7
    scenario = $2; n = $3; gas = $4
  }
'

# forge's own table comes from a separate run: --gas-report runs every call in isolation (as its
# own transaction, intrinsic gas included), which would shift the numbers measured above.
if [[ ${#extra[@]} -gt 0 ]]; then
  echo
  "$FORGE" test --match-path test/SettlementGas.t.sol --gas-report 2>&1 | sed -n '/╭/,/╰/p'
fi
