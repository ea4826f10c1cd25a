"""The real default model (SmolLM2-135M-Instruct) answers; SIGTERM stops everything cleanly."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest
from openai import OpenAI

if TYPE_CHECKING:
    from conftest import ServerProcess

pytestmark = pytest.mark.timeout(400)


@pytest.fixture(scope="module")
def server(default_model_dir: Path, launch_server: Callable[..., ServerProcess]) -> ServerProcess:
    return launch_server("--model", str(default_model_dir), "--dtype", "float32",
                         "--max-total-tokens", "4096", "--drain-timeout", "2")


def test_capital_of_france(server: ServerProcess, default_model_dir: Path) -> None:
    client = OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    r = client.chat.completions.create(
        model=default_model_dir.name, temperature=0, max_tokens=20,
        messages=[{"role": "user", "content": "What is the capital of France?"}])
    assert "Paris" in r.choices[0].message.content
    assert r.choices[0].finish_reason in ("stop", "length")


def test_sigterm_drains_then_aborts_and_stops_every_process(server: ServerProcess) -> None:
    everyone = [server.proc.pid, *server.descendants()]
    assert len(everyone) >= 4  # frontend, worker, scheduler, tokenizer
    lines: list[str] = []

    def stream() -> None:  # a long generation that is in flight at the signal
        body = {"model": "default", "max_tokens": 3000, "ignore_eos": True, "stream": True,
                "messages": [{"role": "user", "content": "Count to a thousand."}]}
        try:
            with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body,
                              timeout=60) as r:
                for line in r.iter_lines():
                    lines.append(line)
        except httpx.HTTPError as exc:
            lines.append(f"error: {exc!r}")

    t = threading.Thread(target=stream)
    t.start()
    deadline = time.monotonic() + 60
    while len(lines) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    started = time.monotonic()
    code = server.stop(timeout_s=30)
    t.join(10)
    assert code == 0, server.log()
    assert time.monotonic() - started < 15
    assert not t.is_alive()
    assert lines[-1] in ("data: [DONE]", "") or lines[-1].startswith("error"), lines[-3:]
    assert server.wait_gone(everyone, 10) == []
