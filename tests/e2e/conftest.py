"""Helpers to run the real server (python -m radixrt.launch_server) as a subprocess."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from bench.cpu import descendants

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 300.0


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of a process, None if it does not exist."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()  # after "pid (comm) "
    return fields[0], int(fields[1])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """One launched server: its URL, process, log file and helpers."""

    def __init__(self, args: list[str], log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._log = open(log_path, "w")  # noqa: SIM115 - closed in stop()
        env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "radixrt.launch_server", "--port", str(self.port), *args],
            stdout=self._log, stderr=subprocess.STDOUT, cwd=REPO, env=env)

    def log(self) -> str:
        return self.log_path.read_text()

    def wait_ready(self, timeout_s: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"server not ready after {timeout_s} s:\n{self.log()}")

    def descendants(self) -> list[int]:
        """PIDs of every process below the server (read from /proc: Linux only)."""
        return sorted(descendants(self.proc.pid))

    @staticmethod
    def cmdline(pid: int) -> str:
        try:
            return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            return ""

    @staticmethod
    def wait_gone(pids: list[int], timeout_s: float) -> list[int]:
        """Wait until none of pids runs (zombies count as gone); return those still running."""
        deadline = time.monotonic() + timeout_s
        while True:
            running = [p for p in pids if (st := _stat(p)) is not None and st[0] != "Z"]
            if not running or time.monotonic() > deadline:
                return running
            time.sleep(0.1)

    def stop(self, timeout_s: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                for pid in self.descendants():
                    os.kill(pid, signal.SIGKILL)
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def metrics(self, headers: dict[str, str] | None = None) -> dict[str, float]:
        """The unlabelled samples of /metrics, by name."""
        text = httpx.get(f"{self.url}/metrics", headers=headers, timeout=10).text
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#") and "{" not in line:
                name, value = line.rsplit(" ", 1)
                out[name] = float(value)
        return out


def start_server(args: list[str], log_path: Path) -> ServerProcess:
    server = ServerProcess(args, log_path)
    try:
        server.wait_ready()
    except BaseException:
        server.stop()
        raise
    return server


@pytest.fixture(scope="module")
def tiny_llama(make_tiny_model) -> Path:  # noqa: ANN001 - the factory fixture of tests/conftest
    return make_tiny_model("llama")


@pytest.fixture(scope="module")
def launch_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., ServerProcess]]:
    """launch_server(*args) -> a ready ServerProcess, stopped (SIGTERM) after the module."""
    servers: list[ServerProcess] = []

    def launch(*args: str) -> ServerProcess:
        log = tmp_path_factory.mktemp("server") / "server.log"
        servers.append(start_server(list(args), log))
        return servers[-1]

    yield launch
    for s in servers:
        if s.stop() not in (0, None):
            print(s.log())


# A Qwen3-style template, shortened: tools in the system turn, calls in <tool_call> tags,
# tool results as <tool_response>, and an empty think block when thinking is off.
HERMES_TEMPLATE = """\
{%- if tools %}<|im_start|>system
{% if messages[0].role == 'system' %}{{ messages[0].content }}

{% endif %}# Tools
<tools>
{% for tool in tools %}{{ tool | tojson }}
{% endfor %}</tools>
For each function call, return a json object within <tool_call></tool_call> XML tags.<|im_end|>
{% elif messages[0].role == 'system' %}<|im_start|>system
{{ messages[0].content }}<|im_end|>
{% endif %}
{%- for m in messages %}{% if not (loop.first and m.role == 'system') %}
{%- if m.role == 'assistant' %}<|im_start|>assistant
{% if m.content %}{{ m.content }}{% endif %}{% for c in m.tool_calls or [] %}
<tool_call>
{{ {"name": c.function.name, "arguments": c.function.arguments} | tojson }}
</tool_call>{% endfor %}<|im_end|>
{% elif m.role == 'tool' %}<|im_start|>user
<tool_response>
{{ m.content }}
</tool_response><|im_end|>
{% else %}<|im_start|>{{ m.role }}
{{ m.content }}<|im_end|>
{% endif %}{% endif %}{% endfor %}
{%- if add_generation_prompt %}<|im_start|>assistant
{% if enable_thinking is defined and enable_thinking is false %}<think>

</think>

{% endif %}{% endif %}"""


@pytest.fixture(scope="module")
def hermes_qwen3(make_tiny_model: Callable[..., Path],
                 tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Qwen3 with HERMES_TEMPLATE: its tool and reasoning parsers are
    detected from the template (hermes, qwen3)."""
    model = tmp_path_factory.mktemp("hermes-qwen3") / "model"
    shutil.copytree(make_tiny_model("qwen3"), model)
    (model / "chat_template.jinja").write_text(HERMES_TEMPLATE)
    return model
