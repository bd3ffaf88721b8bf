#!/bin/sh
# The compose file's provider agent: keystore (once), testnet funds, register, run.
#   env: AGENT_* (see provider_agent/config.py), and for the testnet only:
#   TESTNET_KEY_DIR    the deployer's keys (funds the agent with gas money and network tokens)
#   TESTNET_MODEL_DIR  a model directory to take AGENT_VLLM__MODEL_DIGEST from (tiny model)
#   TESTNET_KDF_COST   keystore KDF cost: fast (testnet default) or production
set -eu
: "${AGENT_PASSPHRASE:?set AGENT_PASSPHRASE}"
: "${AGENT_DATA_DIR:?set AGENT_DATA_DIR}"
provision="python ${APP_DIR:-/app}/scripts/testnet/provision.py"

# compose passes unset ${VARIABLES} as empty strings: an empty AGENT_* setting means "unset"
for name in $(env | sed -n 's/^\(AGENT_[A-Z0-9_]*\)=$/\1/p'); do unset "$name"; done

if [ ! -f "$AGENT_DATA_DIR/keystore.json" ]; then
  provider-agent init --kdf-cost "${TESTNET_KDF_COST:-fast}"
fi
address="$(python -c 'import json,sys; print(json.load(open(sys.argv[1]))["address"])' \
  "$AGENT_DATA_DIR/keystore.json")"

if [ -n "${TESTNET_KEY_DIR:-}" ]; then
  $provision fund-provider "$address" "$TESTNET_KEY_DIR" \
    --rpc-url "$AGENT_CHAIN_RPC_URL" --deployment "$AGENT_DEPLOYMENT_FILE"
fi
if [ -z "${AGENT_VLLM__MODEL_DIGEST:-}" ] && [ -n "${TESTNET_MODEL_DIR:-}" ]; then
  # the vLLM service writes the model before it answers /health, which this service waits for
  AGENT_VLLM__MODEL_DIGEST="$(provider-agent model-digest "$TESTNET_MODEL_DIR")"
  export AGENT_VLLM__MODEL_DIGEST
fi
if [ -z "${AGENT_MARKET_PUBLIC_KEY:-}" ]; then
  AGENT_MARKET_PUBLIC_KEY="$($provision market-key "$AGENT_MARKET_URL")"
  export AGENT_MARKET_PUBLIC_KEY
fi

provider-agent register
exec provider-agent run
