#!/usr/bin/env python3
"""Measure J per output token of batched decoding on a real GPU with the agent's NVML meter.

Builds a Llama with Llama-3.1-8B's shape (random bf16 weights: no model hub is reachable,
and energy per token depends on the shape, not the values), then for each batch size
decodes a fixed number of tokens per sequence with transformers' `generate` and reads the
GPU's total-energy counter through `provider_agent.energy.NvmlMeter` before and after.
Prints one JSON line per batch size: output tokens, seconds, tokens/s, joules, average
power and J/output-token, so the figures can be set beside ML.ENERGY's band for the same
model size and GPU (`market/energy/data/`).

    python3 scripts/gpu-decode-energy.py --batch 1 8 64 --new-tokens 128

This is plain transformers decoding, not vLLM: expect more joules per token than a
serving engine with continuous batching and CUDA graphs spends at the same batch size.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from provider_agent.energy import NvmlMeter, window_energy


def build_model(layers: int) -> tuple[Any, Any]:
    """A Llama-3.1-8B-shaped causal LM with random bf16 weights on cuda:0."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=128_256,
        hidden_size=4096,
        intermediate_size=14_336,
        num_hidden_layers=layers,
        num_attention_heads=32,
        num_key_value_heads=8,
        max_position_embeddings=8192,
        rope_theta=500_000.0,
        torch_dtype="bfloat16",
    )
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda:0"):
        model = LlamaForCausalLM(config)
    model.eval()
    return model, torch


def decode(model: Any, torch: Any, batch: int, prompt_tokens: int, new_tokens: int) -> None:
    """Greedy-decode exactly `new_tokens` per sequence for `batch` sequences."""
    ids = torch.randint(0, 128_000, (batch, prompt_tokens), device="cuda:0")
    with torch.inference_mode():
        model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=0,
        )
    torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2, help="decodes per batch size")
    args = parser.parse_args(argv)

    model, torch = build_model(args.layers)
    params = sum(p.numel() for p in model.parameters())
    print(json.dumps({"model": "llama-3.1-8b shape", "parameters": params}), flush=True)
    decode(model, torch, 1, args.prompt_tokens, 8)  # warm-up: kernels, allocator
    with NvmlMeter() as meter:
        gpu = meter.describe()
        print(json.dumps({"meter": str(gpu)}), flush=True)
        for batch in args.batch:
            start = meter.read()
            began = time.monotonic()
            for _ in range(args.repeats):
                decode(model, torch, batch, args.prompt_tokens, args.new_tokens)
            seconds = time.monotonic() - began
            window = window_energy(start, meter.read())
            tokens = batch * args.new_tokens * args.repeats
            joules = None if window.total_mj is None else window.total_mj / 1000
            print(
                json.dumps(
                    {
                        "batch": batch,
                        "output_tokens": tokens,
                        "seconds": round(seconds, 3),
                        "tokens_per_s": round(tokens / seconds, 1),
                        "joules": joules,
                        "avg_power_w": None
                        if window.avg_power_mw is None
                        else window.avg_power_mw / 1000,
                        "joules_per_token": None if joules is None else round(joules / tokens, 4),
                        "valid": window.valid,
                        "basis": window.basis,
                    }
                ),
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
