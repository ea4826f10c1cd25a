"""Start, health-check and stop benchmark servers as subprocesses."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

import httpx


def free_port() -> int:
    """A TCP port free right now on 127.0.0.1 (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape_metrics(url: str) -> dict[str, float]:
    """The unlabelled samples of a server's /metrics, by name."""
    out = {}
    for line in httpx.get(f"{url}/metrics", timeout=30).text.splitlines():
        if line and not line.startswith("#") and "{" not in line:
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


class ServerError(RuntimeError):
    pass


class ServerProcess:
    """One server in its own process group, logging to a file.

    ready_path is polled until it answers 200 (/health for radixrt, /v1/models for the HF
    baseline). stop() sends SIGTERM to the server (radixrt then shuts its children down
    itself), waits, and only then kills whatever is left of the process group.
    """

    def __init__(self, name: str, cmd: list[str], port: int, log_path: Path,
                 ready_path: str = "/health", startup_timeout: float = 600.0,
                 env: dict[str, str] | None = None) -> None:
        self.name, self.cmd, self.port = name, cmd, port
        self.log_path, self.ready_path = log_path, ready_path
        self.startup_timeout = startup_timeout
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.startup_seconds: float | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ServerProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "wb")
        try:
            # A new session, so stop() can reach the server's children (and nothing else).
            self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=self.env,
                                         start_new_session=True)
        finally:
            log.close()
        return self

    def wait_ready(self) -> float:
        """Block until ready; return the seconds it took. Raises ServerError with the log tail."""
        assert self.proc is not None, "start() first"
        t0 = time.monotonic()
        url = self.base_url + self.ready_path
        while True:
            code = self.proc.poll()
            if code is not None:
                raise ServerError(f"{self.name} exited with {code} while starting:\n{self.log_tail()}")
            try:
                if httpx.get(url, timeout=5.0).status_code == 200:
                    self.startup_seconds = time.monotonic() - t0
                    return self.startup_seconds
            except httpx.HTTPError:
                pass
            if time.monotonic() - t0 > self.startup_timeout:
                self.stop()
                raise ServerError(f"{self.name} not ready after {self.startup_timeout:.0f} s:\n"
                                  f"{self.log_tail()}")
            time.sleep(0.5)

    def stop(self, timeout: float = 60.0) -> int | None:
        """Stop the server; return its exit status (None if it had to be killed)."""
        proc = self.proc
        if proc is None:
            return None
        code: int | None = proc.poll()
        if code is None:
            proc.send_signal(signal.SIGTERM)
            try:
                code = proc.wait(timeout)
            except subprocess.TimeoutExpired:
                code = None
        # Leftover children of a server that died or hung: the group is ours.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if code is None:
            proc.wait(10)
        return code

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def __enter__(self) -> ServerProcess:
        self.start().wait_ready()
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def hf_baseline_cmd(model: str, port: int, dtype: str = "float32") -> list[str]:
    return [sys.executable, "-m", "bench.baseline_hf_server", "--model", model,
            "--port", str(port), "--dtype", dtype]


def radixrt_cmd(model: str, port: int, dtype: str = "float32", cache: bool = True,
                extra: list[str] | None = None) -> list[str]:
    cmd = [sys.executable, "-m", "radixrt.launch_server", "--model", model, "--port", str(port),
           "--dtype", dtype, "--device", "cpu"]
    if not cache:
        cmd.append("--disable-radix-cache")
    return cmd + list(extra or [])


def llama_server_cmd(binary: str, gguf: str, port: int, slots: int = 4, threads: int = 2,
                     ctx_per_slot: int = 2048, extra: list[str] | None = None) -> list[str]:
    """llama.cpp's llama-server with its defaults but for the slots, threads and context
    (-c is shared out evenly: each of the -np slots gets -c / -np tokens). Prompt caching
    (`cache_prompt`, and the RAM prompt cache `--cache-ram`) is on by default."""
    return [binary, "-m", gguf, "-np", str(slots), "-t", str(threads),
            "-c", str(slots * ctx_per_slot), "--host", "127.0.0.1", "--port", str(port),
            *list(extra or [])]
