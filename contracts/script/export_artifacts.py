"""Copies the compiled ABIs and bytecode into the Python package, or checks they are current.

Usage (from the repository root, after `forge build` in contracts/):
    python contracts/script/export_artifacts.py           # write protocol/chain/compiled/
    python contracts/script/export_artifacts.py --check   # exit 1 if they differ from out/
"""

from __future__ import annotations

import sys
from pathlib import Path

from protocol.chain.artifacts import export_artifacts, stale_artifacts

FORGE_OUT = Path(__file__).resolve().parents[1] / "out"


def main(argv: list[str]) -> int:
    if "--check" in argv:
        stale = stale_artifacts(FORGE_OUT)
        if stale:
            print(f"shipped artifacts differ from a fresh compile: {', '.join(stale)}")
            print("run: python contracts/script/export_artifacts.py")
            return 1
        print("shipped artifacts match a fresh compile")
        return 0
    for path in export_artifacts(FORGE_OUT):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
