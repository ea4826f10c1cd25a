"""The real server on CUDA: launch_server with its defaults (FlashInfer, CUDA graphs), one chat
completion over HTTP, clean shutdown."""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
httpx = pytest.importorskip("httpx")

STARTUP_TIMEOUT_S = 240  # model load + JIT (cached by gpu_check's warm-up) + graph capture


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(base: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"server exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        for path in ("/health", "/v1/models"):
            try:
                if httpx.get(base + path, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
        time.sleep(1)
    pytest.fail(f"server not ready in {STARTUP_TIMEOUT_S} s:\n{log.read_text()[-4000:]}")


def test_chat_completion_on_cuda(make_tiny_model, tmp_path: Path) -> None:
    if importlib.util.find_spec("radixrt.launch_server") is None:
        pytest.skip("radixrt.launch_server is not there yet")
    model = make_tiny_model("llama", head_dim=64)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "server.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "radixrt.launch_server", "--model", str(model),
             "--port", str(port)],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=os.environ.copy())
    try:
        wait_ready(base, proc, log)
        name = "default"
        try:
            models = httpx.get(base + "/v1/models", timeout=10).json()
            name = models["data"][0]["id"]
        except (httpx.HTTPError, KeyError, IndexError, ValueError):
            pass
        r = httpx.post(base + "/v1/chat/completions", timeout=120, json={
            "model": name, "messages": [{"role": "user", "content": "Say hello."}],
            "max_tokens": 8, "temperature": 0})
        assert r.status_code == 200, r.text
        body = r.json()
        msg = body["choices"][0]["message"]
        assert msg["role"] == "assistant" and isinstance(msg["content"], str)
        assert 1 <= body["usage"]["completion_tokens"] <= 8
        assert body["choices"][0]["finish_reason"] in ("stop", "length")
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    # SIGINT is a clean shutdown: exit status 0 (or the conventional 130).
    assert proc.returncode in (0, 130, -signal.SIGINT), log.read_text()[-4000:]
