"""Probe a running server as a hostile client would, and print the figures of
docs/reliability.md ("Denial of service and drain").

    python -m bench.dos_probe --url http://127.0.0.1:30000 --pid SERVER_PID [--cases ...]

Each case measures how long a small 4-token completion takes while the attack runs (the
stall), the tokenizer process's RSS before and after, and the attack's own answers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import threading
import time
from pathlib import Path

import httpx

from bench.cpu import descendants
from bench.servers import scrape_metrics

CHAT = [{"role": "user", "content": "Say something."}]


def tokenizer_pid(server_pid: int) -> int:
    for p in sorted(descendants(server_pid)):
        cmd = Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        if cmd.endswith("-m radixrt.tokenizer"):
            return p
    raise SystemExit("no tokenizer child found")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def small(url: str, timeout: float = 120) -> float:
    t0 = time.monotonic()
    try:
        r = httpx.post(f"{url}/v1/completions", timeout=timeout,
                       json={"prompt": "hello", "max_tokens": 4})
        ok = r.status_code == 200
    except httpx.HTTPError:
        ok = False
    return time.monotonic() - t0 if ok else float("inf")


def attack(url: str, body: bytes, path: str, timeout: float) -> dict:
    t0 = time.monotonic()
    try:
        r = httpx.post(f"{url}{path}", content=body, timeout=timeout,
                       headers={"Content-Type": "application/json"})
        return {"status": r.status_code, "s": round(time.monotonic() - t0, 2),
                "error": r.json().get("error", {}).get("message", "")[:120]
                if r.status_code != 200 else ""}
    except httpx.HTTPError as exc:
        return {"status": type(exc).__name__, "s": round(time.monotonic() - t0, 2)}


def during(url: str, tok: int, body: bytes, path: str, timeout: float) -> dict:
    base = sorted(small(url) for _ in range(3))[1]
    before = rss_mb(tok)
    out: dict = {}
    t = threading.Thread(target=lambda: out.update(attack(url, body, path, timeout)))
    t.start()
    time.sleep(0.3)
    stall = small(url, timeout)
    peak = rss_mb(tok)
    t.join(timeout)
    time.sleep(1)
    return {"baseline_s": round(base, 2), "stall_s": round(stall, 2),
            "rss_before_mb": round(before), "rss_during_mb": round(peak),
            "rss_after_mb": round(rss_mb(tok)), "attack": out}


def hold_half_requests(port: int, n: int) -> list[socket.socket]:
    """n connections that send part of their request headers and then nothing."""
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n")
        s.setblocking(False)
        socks.append(s)
    return socks


def wait_closed(socks: list[socket.socket], timeout_s: float) -> tuple[float, int]:
    """Wait until the server closed every one of socks, at most timeout_s; close them all.
    Returns (seconds waited, how many were still open)."""
    t0 = time.monotonic()
    open_ = list(socks)
    while open_ and time.monotonic() - t0 < timeout_s:
        still = []
        for s in open_:
            try:
                if s.recv(4096) != b"":
                    still.append(s)
            except BlockingIOError:
                still.append(s)
            except OSError:
                pass
        open_ = still
        time.sleep(0.1)
    for s in socks:
        s.close()
    return time.monotonic() - t0, len(open_)


def slow_clients(url: str, port: int, n: int, wait_s: float) -> dict:
    socks = hold_half_requests(port, n)
    stall = small(url, 30)
    waited, still_open = wait_closed(socks, wait_s)
    return {"connections": n, "stall_s": round(stall, 2), "still_open": still_open,
            "all_closed_after_s": round(waited, 1) if not still_open else None}


async def _storm(url: str, n: int) -> list[str]:
    async with httpx.AsyncClient(base_url=url, timeout=300,
                                 limits=httpx.Limits(max_connections=n)) as h:
        async def one(i: int) -> str:
            body = {"prompt": f"story {i}", "max_tokens": 32, "ignore_eos": True, "stream": True}
            try:
                async with h.stream("POST", "/v1/completions", json=body) as r:
                    if r.status_code != 200:
                        return str(r.status_code)
                    k = 0
                    async for line in r.aiter_lines():
                        k += line.startswith("data: {")
                        if i % 10 < 3 and k == 3:
                            return "cut"
                    return "done"
            except httpx.HTTPError as exc:
                return type(exc).__name__
        return await asyncio.gather(*(one(i) for i in range(n)))


def storm(url: str, n: int) -> dict:
    res = asyncio.run(_storm(url, n))
    deadline = time.monotonic() + 60
    while (m := scrape_metrics(url))["radixrt_requests_in_flight"] and time.monotonic() < deadline:
        time.sleep(0.2)
    return {"streams": n, "results": {r: res.count(r) for r in set(res)},
            "pages_leaked": m["radixrt_pages_total"] - m["radixrt_pages_free"]
            - m["radixrt_pages_evictable"],
            "health": httpx.get(f"{url}/health", timeout=10).status_code}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--pid", type=int, required=True, help="the server's (frontend's) pid")
    ap.add_argument("--cases", default="template,huge,slow,storm")
    ap.add_argument("--timeout", type=float, default=120)
    ap.add_argument("--slow-clients", type=int, default=2000)
    ap.add_argument("--streams", type=int, default=200)
    ap.add_argument("--huge-repeat", type=int, default=25_000_000,
                    help="the huge prompt is 'a ' this many times (50 MB by default)")
    a = ap.parse_args()
    tok = tokenizer_pid(a.pid)
    port = int(a.url.rsplit(":", 1)[1])
    cases = a.cases.split(",")
    report = {}
    if "template" in cases:
        body = json.dumps({"messages": CHAT, "max_tokens": 4, "chat_template_kwargs": {
            "chat_template": "{{ 'a ' * 5000000 }}"}}).encode()
        report["template"] = during(a.url, tok, body, "/v1/chat/completions", a.timeout)
    if "huge" in cases:
        body = json.dumps({"prompt": "a " * a.huge_repeat, "max_tokens": 4}).encode()
        report["huge"] = during(a.url, tok, body, "/v1/completions", a.timeout)
    if "slow" in cases:
        report["slow"] = slow_clients(a.url, port, a.slow_clients, 60)
    if "storm" in cases:
        report["storm"] = storm(a.url, a.streams)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
