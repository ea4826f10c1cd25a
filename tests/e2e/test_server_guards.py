"""API key, overload (503 + Retry-After), and a dying child process taking the server down."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import openai
import pytest
from openai import OpenAI

if TYPE_CHECKING:
    from conftest import ServerProcess

pytestmark = pytest.mark.timeout(300)

KEY = "sekret-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def server(tiny_llama: Path, launch_server: Callable[..., ServerProcess]) -> ServerProcess:
    return launch_server("--model", str(tiny_llama), "--dtype", "float32",
                         "--max-total-tokens", "4096", "--api-key", KEY,
                         "--max-queued-requests", "3")


def test_api_key(server: ServerProcess) -> None:
    assert httpx.get(f"{server.url}/health").status_code == 200  # open for probes
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
        for method, path in (("GET", "/v1/models"), ("POST", "/v1/chat/completions"),
                             ("POST", "/v1/completions"), ("POST", "/generate"),
                             ("GET", "/metrics"), ("POST", "/flush_cache")):
            r = httpx.request(method, f"{server.url}{path}", headers=headers, json={})
            assert r.status_code == 401, (path, headers)
            assert r.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(f"{server.url}/v1/models", headers=AUTH).status_code == 200
    with pytest.raises(openai.AuthenticationError):
        OpenAI(base_url=f"{server.url}/v1", api_key="wrong", max_retries=0).models.list()
    ok = OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0)
    r = ok.chat.completions.create(model="default", max_tokens=2,
                                   messages=[{"role": "user", "content": "hi"}])
    assert r.usage.completion_tokens == 2


def test_overload_is_503_with_retry_after(server: ServerProcess) -> None:
    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, headers=AUTH, timeout=120) as h:
            async def one(i: int) -> httpx.Response:
                await asyncio.sleep(0.02 * i)  # the first ones are in flight by then
                return await h.post("/v1/completions", json={
                    "prompt": f"request {i}", "max_tokens": 80, "ignore_eos": True})

            return await asyncio.gather(*(one(i) for i in range(8)))

    responses = asyncio.run(run())
    codes = [r.status_code for r in responses]
    assert codes.count(200) >= 3 and 503 in codes and set(codes) == {200, 503}, codes
    for r in responses:
        if r.status_code == 503:
            assert int(r.headers["Retry-After"]) >= 1
            assert r.json()["error"]["code"] == "server_overloaded"
    # n counts too: 4 choices can never fit the 3 allowed in flight: a 400, not worth a retry.
    r = httpx.post(f"{server.url}/v1/completions", headers=AUTH,
                   json={"prompt": "x", "max_tokens": 2, "n": 4})
    assert r.status_code == 400 and r.json()["error"]["code"] == "too_many_sub_requests"
    # Once the load is gone the server accepts again.
    r = httpx.post(f"{server.url}/v1/completions", headers=AUTH,
                   json={"prompt": "x", "max_tokens": 2})
    assert r.status_code == 200


def test_child_death_stops_the_server(server: ServerProcess) -> None:
    # The pipeline's processes (not helpers such as the tokenizer's template renderer, which
    # is replaced when it dies).
    children = [p for p in server.descendants() if server.cmdline(p).strip().rsplit(" ", 1)[-1]
                in ("radixrt.worker", "radixrt.scheduler", "radixrt.tokenizer")]
    assert len(children) >= 3  # worker, scheduler, tokenizer
    everyone = server.descendants()
    os.kill(children[-1], signal.SIGKILL)
    try:
        code = server.proc.wait(30)
    except Exception:
        print(server.log())
        raise
    assert code != 0
    assert "process died" in server.log()
    assert server.wait_gone(everyone, 10) == []
