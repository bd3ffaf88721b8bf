"""Server subprocesses that tests and benchmarks start: waited for until they answer, stopped."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx


@dataclass
class ServerProcess:
    """A server subprocess on a loopback port."""

    process: subprocess.Popen[bytes]
    port: int

    def wait_until_up(
        self,
        health: str,
        timeout_s: float,
        *,
        name: str,
        up: Callable[[int], bool],
        retry_s: float,
    ) -> None:
        """Polls the URL `health` every `retry_s` until its HTTP status passes `up`. Raises
        RuntimeError naming the server (`name`) if the process exits first, or, after
        stopping it, if `timeout_s` pass."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{name} exited with {self.process.returncode}")
            try:
                if up(httpx.get(health, timeout=1).status_code):
                    return
            except httpx.HTTPError:
                pass
            time.sleep(retry_s)
        self.stop()
        raise RuntimeError(f"{name} did not answer {health} in time")

    def stop(self) -> None:
        """Terminates the server and waits for it (killed if it takes more than 10 s)."""
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
