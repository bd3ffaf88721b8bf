#!/bin/sh
# The compose file's one-shot deployer: keys, gas money, `market chain deploy`, operator role.
# Idempotent: a deployment that still exists on the chain is kept (anvil forgets everything
# when it restarts; then the contracts are deployed afresh).
#   env: MARKET_CHAIN_RPC_URL, MARKET_DEPLOYMENT_FILE, TESTNET_KEY_DIR
set -eu
keys="${TESTNET_KEY_DIR:-/deploy/keys}"
rpc="${MARKET_CHAIN_RPC_URL:?}"
out="${MARKET_DEPLOYMENT_FILE:?}"
provision="python ${APP_DIR:-/app}/scripts/testnet/provision.py"

$provision init-keys "$keys"

$provision fund-operators "$keys" --rpc-url "$rpc"
if $provision is-deployed --rpc-url "$rpc" --deployment "$out"; then
  echo "contracts already deployed: $(cat "$out")"
else
  MARKET_DEPLOYER_KEY="$(cat "$keys/deployer.key")" market chain deploy --rpc-url "$rpc" --out "$out"
fi
$provision grant-operator "$keys" --rpc-url "$rpc" --deployment "$out"
