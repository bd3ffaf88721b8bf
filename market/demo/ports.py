"""Loopback ports for the servers the demo, the local testnet, tests and benchmarks start.

A port the OS hands out for `bind(0)` comes from the kernel's ephemeral range, the same range
it draws from for the local end of every outgoing connection. A port picked early and bound
late (a second agent started halfway through a test session) can meanwhile become the local
end of some client's connection, and the server then fails to start with "address in use".
Ports here are drawn below (or above) that range, where only an explicit `bind` can take them,
and never twice in one process.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

_EPHEMERAL = Path("/proc/sys/net/ipv4/ip_local_port_range")
_LINUX_DEFAULT = (32768, 60999)
_LOWEST = 10000  # leave the well-known and registered low ports alone
_given: set[int] = set()


def ephemeral_range() -> tuple[int, int]:
    """The kernel's ephemeral port range (Linux's default where it cannot be read)."""
    try:
        low, high = (int(part) for part in _EPHEMERAL.read_text().split())
    except (OSError, ValueError):
        return _LINUX_DEFAULT
    return low, high


def _candidates() -> range:
    low, high = ephemeral_range()
    if low - _LOWEST >= 2000:
        return range(_LOWEST, low)
    return range(high + 1, 65536)


def bindable(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a TCP server could listen on host:port right now."""
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on host that nothing listens on, outside the ephemeral range."""
    candidates = _candidates()
    for _ in range(500):
        port = random.choice(candidates)  # noqa: S311 (a port to try, not a secret)
        if port not in _given and bindable(port, host):
            _given.add(port)
            return port
    raise RuntimeError(f"no free port in {candidates.start}-{candidates.stop - 1} on {host}")
