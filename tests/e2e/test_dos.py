"""Denial of service: one hostile request or client must not stall the others
(docs/reliability.md, "Denial of service and drain"). Every case runs on a real server on
loopback; the heavier storms are marked slow, with a lean variant here."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from bench.dos_probe import hold_half_requests, wait_closed

if TYPE_CHECKING:
    from conftest import ServerProcess

pytestmark = pytest.mark.timeout(600)

LOOPS = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
BIG = "{{ 'a ' * 5000000 }}"
CHAT = [{"role": "user", "content": "Say something."}]
MAX_BYTES = 60_000_000  # above the 50 MB prompt, so that one is refused by its length


@pytest.fixture(scope="module")
def server(tiny_llama: Path, launch_server: Callable[..., ServerProcess]) -> ServerProcess:
    return launch_server("--model", str(tiny_llama), "--dtype", "float32",
                         "--max-total-tokens", "4096", "--max-queued-requests", "256",
                         "--trust-request-chat-template", "--header-timeout", "2",
                         "--health-stall-timeout", "2", "--max-request-bytes", str(MAX_BYTES))


def child(server: ServerProcess, role: str) -> int:
    """The pid of the server's `python -m radixrt.<role>` child."""
    pids = [p for p in server.descendants()
            if server.cmdline(p).strip().endswith(f"-m radixrt.{role}")]
    assert len(pids) == 1, [server.cmdline(p) for p in server.descendants()]
    return pids[0]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def timed_completion(server: ServerProcess, max_tokens: int = 4) -> float:
    """Seconds a small completion takes (it must succeed)."""
    t0 = time.monotonic()
    r = httpx.post(f"{server.url}/v1/completions", timeout=60,
                   json={"prompt": "hello", "max_tokens": max_tokens, "temperature": 0})
    assert r.status_code == 200, r.text
    return time.monotonic() - t0


def stall_bound(server: ServerProcess) -> float:
    """What "not stalled" means for a small completion: 2 s, plus twice its median time on
    this (possibly shared, busy) machine."""
    times = sorted(timed_completion(server) for _ in range(3))
    return 2.0 + 2 * times[1]


def in_background(fn: Callable[[], object]) -> tuple[threading.Thread, list[object]]:
    out: list[object] = []
    t = threading.Thread(target=lambda: out.append(fn()))
    t.start()
    return t, out


def error_of(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and {"message", "type", "param", "code"} <= set(body["error"])
    return body["error"]


def wait_idle(server: ServerProcess, timeout_s: float = 60) -> dict[str, float]:
    deadline = time.monotonic() + timeout_s
    while True:
        m = server.metrics()
        if (m["radixrt_requests_in_flight"] == 0 and m["radixrt_num_running_requests"] == 0
                or time.monotonic() > deadline):
            return m
        time.sleep(0.1)


def assert_no_pages_leaked(server: ServerProcess) -> None:
    m = wait_idle(server)
    assert m["radixrt_requests_in_flight"] == 0 and m["radixrt_num_running_requests"] == 0, m
    assert m["radixrt_pages_used"] == 0, m
    assert m["radixrt_pages_free"] + m["radixrt_pages_evictable"] == m["radixrt_pages_total"]


# ------------------------------------------------------------------ small fixed statuses


def test_models_root_is_the_served_name(server: ServerProcess) -> None:
    card = httpx.get(f"{server.url}/v1/models").json()["data"][0]
    assert card["root"] == card["id"] == "default" and "/" not in json.dumps(card)


def test_tiny_top_p_is_the_greedy_token(server: ServerProcess) -> None:
    def tokens(**sampling: float) -> list[str]:
        r = httpx.post(f"{server.url}/v1/completions", timeout=60, json={
            "prompt": "The quick brown", "max_tokens": 5, "ignore_eos": True,
            "logprobs": 0, **sampling})
        assert r.status_code == 200, r.text
        return r.json()["choices"][0]["logprobs"]["tokens"]

    greedy = tokens(temperature=0)
    for top_p in (1e-46, 1e-300, 1e-8):
        assert tokens(temperature=1.0, top_p=top_p, seed=3) == greedy
        assert tokens(temperature=0.8, top_p=top_p, top_k=20, seed=4) == greedy


def test_a_request_that_never_fits_is_400(server: ServerProcess) -> None:
    for body, param in (({"prompt": ["x"] * 1100, "max_tokens": 1}, "prompt"),  # limit 256
                        ({"prompt": ["x"] * 257, "max_tokens": 1}, "prompt"),
                        ({"prompt": ["x"] * 17, "n": 16, "max_tokens": 1}, "n")):
        err = error_of(httpx.post(f"{server.url}/v1/completions", json=body, timeout=30), 400)
        assert err["param"] == param and "--max-queued-requests" in err["message"], err
    # What fits still goes through.
    r = httpx.post(f"{server.url}/v1/completions", timeout=60,
                   json={"prompt": ["x"] * 4, "n": 16, "max_tokens": 1})
    assert r.status_code == 200 and len(r.json()["choices"]) == 64


def test_flush_cache_while_a_request_runs_is_409_at_once(server: ServerProcess) -> None:
    body = {"prompt": "count", "max_tokens": 1500, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", f"{server.url}/v1/completions", json=body, timeout=60) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        assert any(next(lines).startswith("data: ") for _ in range(4))
        t0 = time.monotonic()
        resp = httpx.post(f"{server.url}/flush_cache", timeout=30)
        assert time.monotonic() - t0 < 5
        err = error_of(resp, 409)
        assert err["code"] == "requests_running" and "running" in err["message"]
    wait_idle(server)
    r = httpx.post(f"{server.url}/flush_cache", timeout=30)
    assert r.status_code == 200 and r.json()["success"] is True
    m = server.metrics()
    assert m["radixrt_pages_free"] == m["radixrt_pages_total"]


# ------------------------------------------------------------------ the tokenizer stays responsive


def test_hostile_templates_are_bounded_and_stall_no_one(server: ServerProcess) -> None:
    tok = child(server, "tokenizer")
    bound = stall_bound(server)
    before = rss_mb(tok)

    def hostile(template: str, where: str) -> httpx.Response:
        extra = ({"chat_template": template} if where == "field" else
                 {"chat_template_kwargs": {"chat_template": template}})
        return httpx.post(f"{server.url}/v1/chat/completions", timeout=60,
                          json={"messages": CHAT, "max_tokens": 4, **extra})

    threads = [in_background(lambda t=t, w=w: hostile(t, w))
               for t, w in ((LOOPS, "kwargs"), (BIG, "kwargs"), (LOOPS, "field"))]
    time.sleep(0.3)  # the hostile ones are rendering
    stalls = [timed_completion(server) for _ in range(3)]
    chat = httpx.post(f"{server.url}/v1/chat/completions", timeout=60,
                      json={"messages": CHAT, "max_tokens": 4})
    assert chat.status_code == 200
    assert max(stalls) < bound, (stalls, bound)
    for t, _ in threads:
        t.join(30)
    for _, out in threads:
        err = error_of(out[0], 400)  # type: ignore[arg-type]
        assert err["param"] in ("chat_template", "chat_template_kwargs", "messages"), err
    # 'a ' * 5000000 is 10 MB of text that never reaches this process.
    assert rss_mb(tok) - before < 100, (before, rss_mb(tok))
    assert timed_completion(server) < bound


def test_huge_prompt_is_refused_by_length_before_tokenizing(server: ServerProcess) -> None:
    tok = child(server, "tokenizer")
    bound = stall_bound(server)
    # Encoded up front: the client's own JSON encoding must not count as the server's stall.
    huge = json.dumps({"prompt": "a " * 25_000_000, "max_tokens": 4}).encode()
    # Long but within the character bound: it is tokenized (on its own thread), then refused
    # for its token count.
    long = json.dumps({"prompt": "ab " * 55_000, "max_tokens": 4}).encode()
    # The tokenizer's memory after tokenizing the long prompt once (its allocator keeps
    # ~30 MB of that, more or less by thread timing) is the baseline: the 50 MB huge prompt
    # must add nothing to it, as it is refused before it reaches the tokenizer.
    first = httpx.post(f"{server.url}/v1/completions", content=long, timeout=120,
                       headers={"Content-Type": "application/json"})
    assert first.status_code == 400, first.text
    before = rss_mb(tok)
    for _ in range(2):
        threads = [in_background(lambda b=b: httpx.post(
            f"{server.url}/v1/completions", content=b, timeout=120,
            headers={"Content-Type": "application/json"})) for b in (huge, long)]
        time.sleep(0.2)
        stalls = [timed_completion(server) for _ in range(3)]
        assert max(stalls) < bound, (stalls, bound)
        for t, _ in threads:
            t.join(120)
        huge_err = error_of(threads[0][1][0], 400)  # type: ignore[arg-type]
        assert huge_err["param"] == "prompt"
        assert "maximum context length" in huge_err["message"]
        assert "Please reduce the length" in huge_err["message"]
        long_err = error_of(threads[1][1][0], 400)  # type: ignore[arg-type]
        assert "maximum context length" in long_err["message"]
    after = rss_mb(tok)
    assert after <= before * 1.10, (before, after)


def test_body_size_limit_is_413_before_reading(server: ServerProcess) -> None:
    # Declared too large: refused from Content-Length, without the body being read.
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                  b"\r\nContent-Length: %d\r\n\r\n{" % (MAX_BYTES + 1))
        s.settimeout(10)
        head = b""
        while chunk := s.recv(65536):  # the server answers and closes
            head += chunk
        head = head.decode()
    assert head.startswith("HTTP/1.1 413"), head
    assert json.loads(head.split("\r\n\r\n", 1)[1])["error"]["code"] == "request_too_large"

    # Chunked, no length: refused once the bytes received pass the limit.
    def chunks():  # noqa: ANN202
        yield b'{"prompt": "'
        for _ in range(MAX_BYTES // 1_000_000 + 2):
            yield b"a" * 1_000_000
        yield b'", "max_tokens": 1}'

    try:
        r = httpx.post(f"{server.url}/v1/completions", content=chunks(), timeout=60)
        assert error_of(r, 413)["code"] == "request_too_large"
    except httpx.WriteError:  # the server answered and closed while we were still sending
        pass
    assert timed_completion(server) < 2.0


# ------------------------------------------------------------------ slow clients, log floods


def slow_client_storm(server: ServerProcess, n: int) -> None:
    bound = stall_bound(server)
    socks = hold_half_requests(server.port, n)
    assert timed_completion(server) < bound  # served meanwhile
    assert httpx.get(f"{server.url}/health", timeout=5).status_code == 200
    waited, still_open = wait_closed(socks, 2 + 10)  # --header-timeout 2, + a shared CPU
    assert still_open == 0, f"{still_open} of {n} connections still open after {waited:.1f} s"


def test_slow_clients_are_dropped(server: ServerProcess) -> None:
    slow_client_storm(server, 200)


@pytest.mark.slow
def test_slow_clients_storm_2000(server: ServerProcess) -> None:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 8192)), hard))
    slow_client_storm(server, 2000)


def test_a_flood_of_bad_requests_does_not_flood_the_log(server: ServerProcess) -> None:
    size = server.log_path.stat().st_size
    for _ in range(300):
        with socket.create_connection(("127.0.0.1", server.port)) as s:
            s.sendall(b"NOT HTTP AT ALL\r\n\r\n")
            try:
                s.recv(4096)
            except OSError:
                pass
    time.sleep(0.5)
    new = server.log()[size:]
    assert new.count("Invalid HTTP request") <= 10, new[-2000:]
    assert len(new) < 5000
    assert timed_completion(server) < 2.0


# ------------------------------------------------------------------ disconnect storm


async def _storm(url: str, n: int, cut_fraction: float, max_tokens: int) -> tuple[int, int]:
    """n concurrent streams; every 1/cut_fraction-th client cuts its connection after a few
    chunks. Returns (completed, cut)."""
    cut_every = round(1 / cut_fraction)
    limits = httpx.Limits(max_connections=n)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as h:
        async def one(i: int) -> str:
            body = {"prompt": f"story {i}", "max_tokens": max_tokens, "ignore_eos": True,
                    "stream": True, "stream_options": {"include_usage": True}}
            chunks, tokens = 0, 0
            async with h.stream("POST", "/v1/completions", json=body) as r:
                if r.status_code != 200:
                    return f"status {r.status_code}"
                async for line in r.aiter_lines():
                    if line.startswith("data: {"):
                        chunks += 1
                        usage = json.loads(line[6:]).get("usage")
                        tokens = usage["completion_tokens"] if usage else tokens
                        if i % cut_every == 0 and chunks == 3:
                            return "cut"  # leaving the block closes the connection
            return "done" if tokens == max_tokens else f"short {tokens}"

        results = await asyncio.gather(*(one(i) for i in range(n)))
    assert set(results) <= {"done", "cut"}, [r for r in results if r not in ("done", "cut")]
    return results.count("done"), results.count("cut")


def disconnect_storm(server: ServerProcess, n: int) -> None:
    done, cut = asyncio.run(_storm(server.url, n, 0.3, 24))
    assert cut >= n // 4 and done + cut == n
    assert_no_pages_leaked(server)
    assert httpx.get(f"{server.url}/health", timeout=5).status_code == 200


def test_disconnect_storm_leaks_no_pages(server: ServerProcess) -> None:
    disconnect_storm(server, 40)


@pytest.mark.slow
def test_disconnect_storm_200(server: ServerProcess) -> None:
    disconnect_storm(server, 200)


# ------------------------------------------------------------------ /health sees a stuck stage


def test_health_names_a_stuck_stage(server: ServerProcess) -> None:
    assert httpx.get(f"{server.url}/health", timeout=5).json() == {"status": "ok"}
    sched = child(server, "scheduler")
    os.kill(sched, signal.SIGSTOP)
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            r = httpx.get(f"{server.url}/health", timeout=10)
            if r.status_code == 503:
                break
            time.sleep(0.3)
        assert r.status_code == 503 and r.json()["stage"] == "scheduler", r.text
    finally:
        os.kill(sched, signal.SIGCONT)
    deadline = time.monotonic() + 15
    while httpx.get(f"{server.url}/health", timeout=10).status_code != 200:
        assert time.monotonic() < deadline, "the server did not turn healthy again"
        time.sleep(0.3)
    assert timed_completion(server) < 2.0
