"""Data parallel end to end: `launch_server --dp-size 2` (two real replica servers behind the
in-process router) and a standalone `python -m radixrt.router` in front of the same replicas,
driven with the official openai client. Tiny random model, one thread per replica.

The tests run in file order on one cluster: the last ones kill a replica, bring it back and
stop everything.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
import psutil
import pytest
from openai import OpenAI

REPO = Path(__file__).resolve().parents[2]

KEY = "router-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
REPLICA = "x-radixrt-replica"
DOC = "Read this document, then answer my questions. " + " ".join(
    f"Line {i}: the river runs past the old mill and the bridge." for i in range(25))


class Proc:
    """A radixrt command on a chosen port, logging to a file."""

    def __init__(self, module: str, args: list[str], port: int, log: Path) -> None:
        self.url, self.log_path = f"http://127.0.0.1:{port}", log
        with open(log, "w") as f:
            self.proc = subprocess.Popen([sys.executable, "-m", module, "--port", str(port), *args],
                                         stdout=f, stderr=subprocess.STDOUT, cwd=REPO,
                                         env={**os.environ, "PYTHONPATH": str(REPO)})

    def wait_ready(self, timeout_s: float = 300.0) -> Proc:
        def ready() -> bool:
            assert self.proc.poll() is None, self.log_path.read_text()
            return _ok(f"{self.url}/health")
        wait_for(ready, timeout_s, f"{self.url}/health")
        return self

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                for p in psutil.Process(self.proc.pid).children(recursive=True):
                    p.kill()
                self.proc.kill()
        return self.proc.wait()


@dataclass
class Cluster:
    dp: Any  # tests/e2e/conftest.py's ServerProcess: launch_server --dp-size 2 (router A)
    router: Proc  # standalone router B in front of the same replicas
    replica_urls: list[str]
    tiny: Path
    extra: list[Proc] = field(default_factory=list)

    @property
    def router_url(self) -> str:
        return self.router.url

    def client(self, url: str | None = None) -> OpenAI:
        return OpenAI(base_url=f"{url or self.router_url}/v1", api_key=KEY, max_retries=0)

    def router_health(self) -> dict[str, Any]:
        return httpx.get(f"{self.router_url}/health", timeout=5).json()


def router_metrics(url: str) -> dict[str, float]:
    """Samples of the router's /metrics by 'name{labels}' (labels sorted as exported)."""
    out = {}
    for line in httpx.get(f"{url}/metrics", timeout=5).text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def descendants(pid: int) -> list[int]:
    return [p.pid for p in psutil.Process(pid).children(recursive=True)]


def wait_gone(pids: list[int], timeout_s: float) -> list[int]:
    """Those of pids still running (zombies count as gone) after at most timeout_s."""
    def running() -> list[int]:
        out = []
        for pid in pids:
            try:
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    out.append(pid)
            except psutil.NoSuchProcess:
                pass
        return out
    deadline = time.monotonic() + timeout_s
    while (left := running()) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def wait_for(cond: Callable[[], bool], timeout_s: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def cluster(tiny_llama: Path, launch_server: Callable[..., Any],
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    dp = launch_server("--model", str(tiny_llama), "--dp-size", "2", "--num-threads", "1",
                       "--api-key", KEY, "--health-interval", "0.3")
    urls = sorted(httpx.get(f"{dp.url}/health", timeout=5).json()["replicas"])
    logs = tmp_path_factory.mktemp("router")
    router = Proc("radixrt.router", ["--worker-urls", *urls, "--health-interval", "0.3",
                                     "--max-body-bytes", "100000"], free_port(),
                  logs / "router.log")
    c = Cluster(dp, router, urls, tiny_llama)
    try:
        router.wait_ready(60)
        yield c
    finally:
        for p in [router, *c.extra]:
            p.stop()


def _ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_openai_client_through_both_routers(cluster: Cluster) -> None:
    msgs = [{"role": "user", "content": "Tell me about rivers."}]
    direct = cluster.client(cluster.replica_urls[0]).chat.completions.create(
        model="default", messages=msgs, max_tokens=12, temperature=0)
    for url in (cluster.router_url, cluster.dp.url):  # standalone router B, dp's router A
        c = cluster.client(url)
        raw = c.chat.completions.with_raw_response.create(
            model="default", messages=msgs, max_tokens=12, temperature=0)
        assert raw.headers[REPLICA] in cluster.replica_urls
        assert raw.parse().choices[0].message.content == direct.choices[0].message.content
        stream = c.chat.completions.create(model="default", messages=msgs, max_tokens=12,
                                           temperature=0, stream=True,
                                           stream_options={"include_usage": True})
        chunks = list(stream)
        text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
        assert text == direct.choices[0].message.content
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 12
        comp = c.completions.create(model="default", prompt="The mill", max_tokens=5,
                                    temperature=0)
        assert comp.usage.completion_tokens == 5
        assert [m.id for m in c.models.list()] == ["default"]


def test_other_endpoints_and_errors(cluster: Cluster) -> None:
    url = cluster.router_url
    gen = httpx.post(f"{url}/generate", headers=AUTH, timeout=30,
                     json={"text": "The bridge", "sampling_params": {"max_new_tokens": 3}})
    assert gen.status_code == 200 and gen.json()["meta_info"]["completion_tokens"] == 3
    # The replica's own answers pass through: no key, bad request, unknown path.
    nokey = httpx.post(f"{url}/v1/completions", json={"model": "default", "prompt": "x"})
    assert nokey.status_code == 401 and nokey.json()["error"]["code"] == "invalid_api_key"
    bad = httpx.post(f"{url}/v1/completions", headers=AUTH, content=b"{not json")
    assert bad.status_code == 400 and "error" in bad.json()
    assert httpx.get(f"{url}/v1/nothing", headers=AUTH).status_code == 404
    big = httpx.post(f"{url}/v1/completions", headers=AUTH,
                     json={"model": "default", "prompt": "x" * 200_000})
    assert big.status_code == 413 and big.json()["error"]["code"] == "request_too_large"
    # Router A (dp) checks the key itself, /health stays open for probes.
    assert httpx.get(f"{cluster.dp.url}/metrics").status_code == 401
    assert httpx.get(f"{cluster.dp.url}/health").status_code == 200
    flush = httpx.post(f"{url}/flush_cache", headers=AUTH, timeout=30)
    assert flush.status_code == 200
    assert set(flush.json()["replicas"]) == set(cluster.replica_urls)


def test_prefix_affinity(cluster: Cluster) -> None:
    """Each conversation stays on one replica (and hits its cache); two conversations land
    on different replicas."""
    c = cluster.client()
    where = {}
    for name in ("A", "B"):
        msgs = [{"role": "user", "content": f"Conversation {name}. {DOC}"}]
        seen, cached = set(), []
        for turn in range(3):
            raw = c.chat.completions.with_raw_response.create(
                model="default", messages=msgs, max_tokens=6, temperature=0)
            reply = raw.parse()
            seen.add(raw.headers[REPLICA])
            cached.append(reply.usage.prompt_tokens_details.cached_tokens)
            msgs += [{"role": "assistant", "content": reply.choices[0].message.content},
                     {"role": "user", "content": f"And what about point {turn}?"}]
        assert len(seen) == 1, f"conversation {name} moved between replicas: {seen}"
        where[name] = seen.pop()
        # Later turns reuse (nearly) the whole previous prompt from the replica's cache.
        assert cached[1] > 300 and cached[2] > cached[1]
    assert where["A"] != where["B"]


def test_router_metrics_and_health(cluster: Cluster) -> None:
    m = router_metrics(cluster.router_url)
    for u in cluster.replica_urls:
        assert m[f'radixrt_router_requests_total{{replica="{u}"}}'] > 0
        assert m[f'radixrt_router_replica_healthy{{replica="{u}"}}'] == 1
        assert m[f'radixrt_router_requests_in_flight{{replica="{u}"}}'] == 0
    assert m['radixrt_router_routing_decisions_total{reason="prefix_match"}'] >= 4
    assert m['radixrt_router_routing_decisions_total{reason="short_match"}'] >= 2
    assert m["radixrt_router_matched_chars_total"] > 0
    health = cluster.router_health()
    assert health["healthy_replicas"] == 2 and health["status"] == "ok"


def test_failover_when_a_replica_dies(cluster: Cluster) -> None:
    c = cluster.client()
    msgs = [{"role": "user", "content": f"Conversation F. {DOC}"}]
    first = c.chat.completions.with_raw_response.create(model="default", messages=msgs,
                                                        max_tokens=4, temperature=0)
    victim = first.headers[REPLICA]
    msgs += [{"role": "assistant", "content": first.parse().choices[0].message.content},
             {"role": "user", "content": "Go on, at length."}]
    long = dict(model="default", messages=msgs, max_tokens=1200, temperature=0,
                extra_body={"ignore_eos": True})
    # In flight on the victim: a stream (started) and a plain request (in a thread).
    raw = c.chat.completions.with_raw_response.create(**long, stream=True)
    assert raw.headers[REPLICA] == victim
    chunks = iter(raw.parse())
    next(chunks)
    plain: list[BaseException | object] = []
    thread = threading.Thread(target=lambda: plain.append(_call(c, long)))
    thread.start()
    key = f'radixrt_router_requests_in_flight{{replica="{victim}"}}'
    wait_for(lambda: router_metrics(cluster.router_url)[key] == 2, 30, "2 requests in flight")

    pid = _replica_pid(cluster, victim)
    below = descendants(pid)
    os.kill(pid, signal.SIGKILL)

    with pytest.raises(openai.APIError, match="failed mid-stream"):
        for _ in chunks:
            pass
    thread.join(60)
    assert isinstance(plain[0], openai.APIStatusError), plain
    assert plain[0].status_code == 502 and "failed" in plain[0].message
    assert wait_gone(below, 30) == [], "the killed replica left orphans"

    # New requests, this conversation's included, go to the survivor.
    for url in (cluster.router_url, cluster.dp.url):
        raw = cluster.client(url).chat.completions.with_raw_response.create(
            model="default", messages=msgs, max_tokens=4, temperature=0)
        assert raw.headers[REPLICA] != victim
    health = cluster.router_health()
    assert health["healthy_replicas"] == 1 and health["replicas"][victim] is False
    m = router_metrics(cluster.router_url)
    assert m[f'radixrt_router_request_errors_total{{kind="disconnect",replica="{victim}"}}'] == 2
    assert m[key] == 0 and m[f'radixrt_router_replica_healthy{{replica="{victim}"}}'] == 0
    assert "replica 0" in cluster.dp.log() or "replica 1" in cluster.dp.log()


def test_a_replica_that_comes_back_is_used_again(cluster: Cluster) -> None:
    dead = [u for u, ok in cluster.router_health()["replicas"].items() if not ok]
    assert len(dead) == 1
    port = int(dead[0].rsplit(":", 1)[1])
    revived = Proc("radixrt.launch_server", ["--model", str(cluster.tiny), "--num-threads", "1",
                                             "--api-key", KEY], port,
                   cluster.router.log_path.with_name("revived.log"))
    cluster.extra.append(revived)
    revived.wait_ready()
    wait_for(lambda: cluster.router_health()["healthy_replicas"] == 2, 30, "the replica back")
    # Its prefix tree was forgotten, so a new conversation prefers it (more cache room).
    raw = cluster.client().chat.completions.with_raw_response.create(
        model="default", messages=[{"role": "user", "content": f"Conversation G. {DOC}"}],
        max_tokens=4, temperature=0)
    assert raw.headers[REPLICA] == dead[0]


def test_clean_shutdown(cluster: Cluster) -> None:
    below = cluster.dp.descendants()
    assert below, "the dp server has no replica processes"
    t0 = time.monotonic()
    assert cluster.dp.stop() == 0
    assert wait_gone(below, 30) == [], "dp left orphans"
    assert time.monotonic() - t0 < 60
    assert cluster.router.stop() == 0
    assert "Traceback" not in cluster.router.log_path.read_text()


def _replica_pid(cluster: Cluster, url: str) -> int:
    port = url.rsplit(":", 1)[1]
    for pid in cluster.dp.descendants():
        argv = cluster.dp.cmdline(pid).split()
        if "radixrt.launch_server" in argv and argv[argv.index("--port") + 1] == port:
            return pid
    raise AssertionError(f"no replica process on port {port}")


def _call(c: OpenAI, kw: dict[str, Any]) -> object:
    try:
        return c.chat.completions.create(**kw)
    except BaseException as exc:  # noqa: BLE001 - the test inspects it
        return exc
