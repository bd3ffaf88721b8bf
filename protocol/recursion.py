"""A recursion limit under which deeply nested input fails with an error, not a crash.

py_ecc (which eth-account and py-evm import) raises Python's recursion limit to 100,000 when
imported. CPython's C JSON decoder counts its nesting against that limit, so a body nested
some 70,000 levels deep (about 140 KB, no key needed) overflowed the C stack and killed the
whole process instead of raising `RecursionError`. `cap_recursion` imports py_ecc first, so
that its raise is spent, then sets the limit py-evm itself needs (1,024 nested calls of
12 frames), far below the depth the C stack survives.
"""

from __future__ import annotations

import importlib
import sys

SAFE_RECURSION_LIMIT = 1024 * 12


def cap_recursion() -> None:
    """Sets `SAFE_RECURSION_LIMIT` once the libraries that raise the limit are imported."""
    for module in ("py_ecc", "eth"):
        try:
            importlib.import_module(module)
        except ImportError:
            continue
    sys.setrecursionlimit(SAFE_RECURSION_LIMIT)
