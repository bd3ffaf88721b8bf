"""A throwaway Redis server for tests: Debian's `redis-server` on a free loopback port,
no persistence, in a fresh directory that `stop()` removes."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from market.demo.ports import free_port
from tests.support.processes import ServerProcess


class RedisUnavailableError(RuntimeError):
    """Redis could not be started here; the message says why."""


@dataclass
class RedisServer(ServerProcess):
    """A running throwaway server."""

    root: Path

    @property
    def url(self) -> str:
        """Its URL, database 0."""
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        """Stops the server and removes its directory."""
        super().stop()
        shutil.rmtree(self.root, ignore_errors=True)


def start_redis(timeout_s: float = 15.0) -> RedisServer:
    """Starts a server and waits until it answers PING."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RedisUnavailableError("redis-server is not installed")
    root = Path(tempfile.mkdtemp(prefix="market-redis-"))
    port = free_port()
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(root)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    server = RedisServer(process, port, root)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            server.stop()
            raise RedisUnavailableError(f"redis-server exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return server
        except OSError:
            pass
        time.sleep(0.05)
    server.stop()
    raise RedisUnavailableError(f"redis-server did not answer within {timeout_s} s")
