#!/bin/sh
# The compose file's CPU engine: build the tiny test model (once) into $MODEL_DIR, then serve
# it with vLLM's CPU build and the flags market/demo/vllm_server.py uses.
set -eu
model_dir="${MODEL_DIR:-/models/tiny-llama}"
/opt/vllm/bin/python /app/market/demo/tiny_model.py "$model_dir"
exec /opt/vllm/bin/python -m vllm.entrypoints.cli.main serve "$model_dir" \
  --served-model-name "${SERVED_MODEL:-tiny-llama}" --host 0.0.0.0 --port "${PORT:-8000}" \
  --enforce-eager --dtype float32 --no-enable-chunked-prefill "$@"
