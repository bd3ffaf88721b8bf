"""The served weights' digest (`model_digest` in offers and receipts), computed from the files.

Rule: SHA-256 over each weight file in turn, as its name (UTF-8), a NUL byte, its size as
8 little-endian bytes, then its bytes. A model directory's weight files are its
`*.safetensors`, in name order (the shards of a large model included); a single weights
file (a GGUF, say) is that file alone. Anyone holding the same files gets the same digest,
whatever the directory is called or where it sits. Standard library only, so that a script
in vLLM's own environment can load this file by its path.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

CHUNK = 1 << 20


def weight_files(model: str | os.PathLike[str]) -> list[Path]:
    """The files the digest covers: a directory's `*.safetensors` in name order, or the file."""
    path = Path(model)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is neither a model directory nor a weights file")
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{path} holds no *.safetensors file")
    return files


def weights_digest(model: str | os.PathLike[str]) -> str:
    """`0x` + the SHA-256 hex digest of the weights at `model` (module doc)."""
    digest = hashlib.sha256()
    for path in weight_files(model):
        digest.update(path.name.encode() + b"\0" + path.stat().st_size.to_bytes(8, "little"))
        with path.open("rb") as weights:
            for chunk in iter(lambda: weights.read(CHUNK), b""):
                digest.update(chunk)
    return "0x" + digest.hexdigest()
