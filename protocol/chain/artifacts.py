"""Compiled contracts shipped inside the package, so that running the market needs no Node.

`contracts/` compiles them with forge; `export_artifacts` copies the ABI and bytecode of the
deployable contracts into `protocol/chain/compiled/`, and CI checks that the shipped files
match a fresh compile (`python contracts/script/export_artifacts.py --check`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

COMPILED_DIR = Path(__file__).parent / "compiled"
CONTRACTS = ("PaymentToken", "NetworkToken", "Settlement")


@dataclass(frozen=True)
class Artifact:
    """ABI and creation bytecode of one contract."""

    name: str
    abi: list[dict[str, Any]]
    bytecode: str


@cache
def load_artifact(name: str) -> Artifact:
    """Loads a shipped contract artifact by contract name."""
    if name not in CONTRACTS:
        raise KeyError(f"unknown contract {name!r}; shipped: {', '.join(CONTRACTS)}")
    data = json.loads((COMPILED_DIR / f"{name}.json").read_text())
    return Artifact(name=name, abi=data["abi"], bytecode=data["bytecode"])


def render_artifact(forge_output: Path, name: str) -> str:
    """Renders the shipped JSON of contract `name` from a forge `out/` directory."""
    data = json.loads((forge_output / f"{name}.sol" / f"{name}.json").read_text())
    shipped = {"contractName": name, "abi": data["abi"], "bytecode": data["bytecode"]["object"]}
    return json.dumps(shipped, indent=1, sort_keys=True) + "\n"


def export_artifacts(forge_output: Path, target: Path = COMPILED_DIR) -> list[Path]:
    """Writes the shipped artifacts from a forge `out/` directory; returns the paths written."""
    target.mkdir(parents=True, exist_ok=True)
    written = []
    for name in CONTRACTS:
        path = target / f"{name}.json"
        path.write_text(render_artifact(forge_output, name))
        written.append(path)
    return written


def stale_artifacts(forge_output: Path, target: Path = COMPILED_DIR) -> list[str]:
    """Names of shipped artifacts that differ from (or are missing in) a fresh compile."""
    stale = []
    for name in CONTRACTS:
        path = target / f"{name}.json"
        if not path.exists() or path.read_text() != render_artifact(forge_output, name):
            stale.append(name)
    return stale
