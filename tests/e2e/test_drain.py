"""Graceful drain: SIGTERM stops new requests (503 + Retry-After, /health 503) while those in
flight finish; past --drain-timeout (or at a second signal) the rest are aborted; exit 0 and
no process left behind. Also: request chat templates are refused unless trusted."""

from __future__ import annotations

import asyncio
import json
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

if TYPE_CHECKING:
    from conftest import ServerProcess

pytestmark = pytest.mark.timeout(600)

CHAT = [{"role": "user", "content": "Say something."}]


def stream(url: str, max_tokens: int, out: dict[str, object]) -> None:
    """One completion stream; out gets its token count, finish reason and last line."""
    body = {"prompt": "go", "max_tokens": max_tokens, "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True}}
    out.update(tokens=0, chunks=0, finish=None, last=None)
    try:
        with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=120) as r:
            out["status"] = r.status_code
            for line in r.iter_lines():
                if not line:
                    continue
                out["last"] = line
                if line.startswith("data: {"):
                    chunk = json.loads(line[6:])
                    out["chunks"] = int(out["chunks"]) + 1  # type: ignore[call-overload]
                    if chunk.get("usage"):
                        out["tokens"] = chunk["usage"]["completion_tokens"]
                    for c in chunk.get("choices", []):
                        out["finish"] = c.get("finish_reason") or out["finish"]
    except httpx.HTTPError as exc:
        out["error"] = repr(exc)


def start_streams(url: str, lengths: list[int]) -> list[tuple[threading.Thread, dict]]:
    runs = []
    for n in lengths:
        out: dict[str, object] = {}
        t = threading.Thread(target=stream, args=(url, n, out))
        t.start()
        runs.append((t, out))
    deadline = time.monotonic() + 60
    while any(int(o.get("chunks", 0)) < 2 for _, o in runs):  # type: ignore[call-overload]
        assert time.monotonic() < deadline, [o for _, o in runs]
        time.sleep(0.05)
    return runs


@pytest.fixture()
def make_server(tiny_llama: Path, launch_server: Callable[..., ServerProcess]
                ) -> Callable[..., ServerProcess]:
    def make(*args: str) -> ServerProcess:
        return launch_server("--model", str(tiny_llama), "--dtype", "float32",
                             "--max-total-tokens", "4096", *args)
    return make


def assert_draining(server: ServerProcess) -> None:
    r = httpx.post(f"{server.url}/v1/completions", json={"prompt": "x", "max_tokens": 2},
                   timeout=10)
    assert r.status_code == 503 and int(r.headers["Retry-After"]) >= 1, r.text
    assert r.json()["error"]["type"] == "service_unavailable"
    assert httpx.get(f"{server.url}/health", timeout=10).status_code == 503


def test_request_templates_refused_then_sigterm_drains(
        make_server: Callable[..., ServerProcess]) -> None:
    server = make_server()
    try:
        for extra, param in (({"chat_template": "{{ 'x' }}"}, "chat_template"),
                             ({"chat_template_kwargs": {"chat_template": "{{ 'x' }}"}},
                              "chat_template_kwargs")):
            r = httpx.post(f"{server.url}/v1/chat/completions", timeout=30,
                           json={"messages": CHAT, "max_tokens": 2, **extra})
            assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
            assert "--trust-request-chat-template" in r.json()["error"]["message"]
        ok = httpx.post(f"{server.url}/v1/chat/completions", timeout=30, json={
            "messages": CHAT, "max_tokens": 2,
            "chat_template_kwargs": {"add_generation_prompt": True}})
        assert ok.status_code == 200, ok.text

        everyone = [server.proc.pid, *server.descendants()]
        # Three short streams finish during the drain; a long one is cut by a second signal.
        runs = start_streams(server.url, [40, 40, 40, 1800])
        server.proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        assert_draining(server)
        for t, _ in runs[:3]:
            t.join(60)
        for _, out in runs[:3]:
            assert out["tokens"] == 40 and out["finish"] == "length", out
            assert out["last"] == "data: [DONE]", out
        assert server.proc.poll() is None and runs[3][0].is_alive()  # still draining
        t0 = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)  # the second one: at once
        code = server.proc.wait(30)
        assert time.monotonic() - t0 < 10
        runs[3][0].join(10)
        assert code == 0, server.log()
        assert runs[3][1]["finish"] == "abort" or "error" in runs[3][1], runs[3][1]
        assert server.wait_gone(everyone, 10) == []
    finally:
        server.stop()


async def _load(url: str, n: int, max_tokens: int) -> list[str]:
    async with httpx.AsyncClient(base_url=url, timeout=120,
                                 limits=httpx.Limits(max_connections=n)) as h:
        async def one(i: int) -> str:
            body = {"prompt": f"story {i}", "max_tokens": max_tokens, "ignore_eos": True,
                    "stream": True}
            try:
                async with h.stream("POST", "/v1/completions", json=body) as r:
                    if r.status_code != 200:
                        return str(r.status_code)
                    finish = None
                    async for line in r.aiter_lines():
                        if line.startswith("data: {"):
                            for c in json.loads(line[6:])["choices"]:
                                finish = c.get("finish_reason") or finish
                    return str(finish)
            except httpx.HTTPError as exc:
                return type(exc).__name__

        return await asyncio.gather(*(one(i) for i in range(n)))


@pytest.mark.slow
def test_drain_timeout_aborts_under_load(make_server: Callable[..., ServerProcess]) -> None:
    """SIGTERM during a storm of streams: those that cannot finish within --drain-timeout
    end with finish_reason abort; exit 0; nothing left behind; no request hangs."""
    server = make_server("--drain-timeout", "3", "--max-queued-requests", "256")
    try:
        everyone = [server.proc.pid, *server.descendants()]
        results: list[str] = []
        t = threading.Thread(target=lambda: results.extend(asyncio.run(
            _load(server.url, 150, 1500))))
        t.start()
        time.sleep(5)
        t0 = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        code = server.proc.wait(60)
        took = time.monotonic() - t0
        t.join(60)
        assert code == 0, server.log()
        assert 2.5 < took < 20, took
        assert len(results) == 150 and set(results) <= {"abort", "length", "503"}, results
        assert "abort" in results
        assert server.wait_gone(everyone, 10) == []
    finally:
        server.stop()
