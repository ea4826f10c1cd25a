"""Async load generator for any OpenAI-compatible server (radixrt, vLLM, SGLang, llama.cpp).

Every request streams (`stream_options.include_usage`), greedy, with a fixed max_tokens and
`ignore_eos` (where the server takes it) so all servers produce the same number of tokens.
Per request it records send time, the arrival time of every content chunk (TTFT and
inter-token latency), end time, the final usage (prompt, completion and cached tokens) and
errors. Times are seconds since the run started (time.perf_counter).

    python -m bench.client --base-url http://127.0.0.1:30000 --workload shared_prefix
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx

from bench.workloads import Api, Session, Workload


@dataclass
class RequestRecord:
    workload: str
    sid: str
    turn: int  # 0-based round within the session
    api: Api
    group: int | None = None
    send_time: float = 0.0
    chunk_times: list[float] = field(default_factory=list)  # arrivals of non-empty content
    end_time: float = 0.0
    prompt_tokens: int | None = None  # from the server's usage
    completion_tokens: int | None = None
    cached_tokens: int | None = None  # None: the server does not report it
    output_text: str = ""
    finish_reason: str | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def ttft(self) -> float | None:
        return self.chunk_times[0] - self.send_time if self.chunk_times else None

    @property
    def latency(self) -> float:
        return self.end_time - self.send_time

    @property
    def itl(self) -> list[float]:
        """Gaps between consecutive content chunks (a chunk may carry several tokens)."""
        return [b - a for a, b in itertools.pairwise(self.chunk_times)]

    @property
    def tpot(self) -> float | None:
        """Mean time per output token after the first (None with fewer than 2 tokens)."""
        n = self.output_tokens
        if self.ttft is None or n < 2:
            return None
        return (self.end_time - self.chunk_times[0]) / (n - 1)

    @property
    def output_tokens(self) -> int:
        # Servers that omit usage: count chunks (one token per chunk for most servers).
        return self.completion_tokens if self.completion_tokens is not None else len(self.chunk_times)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RequestRecord:
        return cls(**d)


@dataclass
class RunResult:
    workload: str
    records: list[RequestRecord]
    duration: float  # run start to the last request's end (s)
    started_at: float  # wall clock (time.time()) at run start

    def to_dict(self) -> dict[str, Any]:
        return {"workload": self.workload, "duration": self.duration,
                "started_at": self.started_at, "records": [r.to_dict() for r in self.records]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunResult:
        return cls(workload=d["workload"], duration=d["duration"], started_at=d["started_at"],
                   records=[RequestRecord.from_dict(r) for r in d["records"]])


class Progress:
    """A done/total counter on stderr: one redrawn line on a terminal, every 10 % in a log."""

    def __init__(self, label: str, total: int, stream: Any = None) -> None:
        self.label, self.total = label, total
        self.done = self.errors = 0
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.t0 = time.perf_counter()
        self._last_decile = -1

    def update(self, ok: bool) -> None:
        self.done += 1
        self.errors += 0 if ok else 1
        decile = self.done * 10 // max(self.total, 1)
        if self.tty or decile != self._last_decile or self.done == self.total:
            self._last_decile = decile
            line = (f"[{self.label}] {self.done}/{self.total} requests"
                    f"{f', {self.errors} errors' if self.errors else ''}"
                    f" ({time.perf_counter() - self.t0:.0f} s)")
            end = "" if self.tty and self.done < self.total else "\n"
            print(("\r" if self.tty else "") + line, end=end, file=self.stream, flush=True)


def normalize_base_url(url: str) -> str:
    """http://host:port, .../ or .../v1 -> http://host:port/v1."""
    url = url.rstrip("/")
    return url if url.endswith("/v1") else url + "/v1"


class OpenAIClient:
    """Streaming requests to one server. Use as `async with OpenAIClient(url) as c:`."""

    def __init__(self, base_url: str, model: str | None = None, api_key: str | None = None,
                 ignore_eos: bool = True, timeout: float = 900.0,
                 extra_body: dict[str, Any] | None = None) -> None:
        self.base_url = normalize_base_url(base_url)
        self.model = model
        self.ignore_eos = ignore_eos
        self.extra_body = dict(extra_body or {})
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        # No pool limit below the workload's own concurrency; no read timeout per chunk
        # shorter than a long queueing delay.
        self._http = httpx.AsyncClient(
            headers=headers, timeout=httpx.Timeout(timeout, connect=30.0),
            limits=httpx.Limits(max_connections=1024, max_keepalive_connections=1024))

    async def __aenter__(self) -> OpenAIClient:
        if self.model is None:
            self.model = await self.first_model()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._http.aclose()

    async def first_model(self) -> str:
        resp = await self._http.get(f"{self.base_url}/models")
        resp.raise_for_status()
        return str(resp.json()["data"][0]["id"])

    def payload(self, api: Api, body: list[dict[str, str]] | str, max_tokens: int) -> dict[str, Any]:
        p: dict[str, Any] = {"model": self.model, "max_tokens": max_tokens, "temperature": 0.0,
                             "stream": True, "stream_options": {"include_usage": True}}
        p["messages" if api == "chat" else "prompt"] = body
        if self.ignore_eos:
            p["ignore_eos"] = True  # radixrt, vLLM, SGLang and llama.cpp accept it
        return {**p, **self.extra_body}

    async def send(self, rec: RequestRecord, body: list[dict[str, str]] | str, max_tokens: int,
                   t0: float) -> RequestRecord:
        """Send one request, filling rec in place (errors land in rec.error, never raised)."""
        url = f"{self.base_url}/{'chat/completions' if rec.api == 'chat' else 'completions'}"
        parts: list[str] = []
        rec.send_time = time.perf_counter() - t0
        try:
            async with self._http.stream("POST", url, json=self.payload(rec.api, body, max_tokens)) as resp:
                if resp.status_code != 200:
                    text = (await resp.aread()).decode(errors="replace")
                    rec.error = f"HTTP {resp.status_code}: {text[:300]}"
                else:
                    async for line in resp.aiter_lines():
                        if self.stream_line(rec, line, time.perf_counter() - t0, parts):
                            break
        except (httpx.HTTPError, json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            rec.error = f"{type(e).__name__}: {e}"
        rec.end_time = time.perf_counter() - t0
        rec.output_text = "".join(parts)
        if rec.error is None and not rec.chunk_times:
            rec.error = "no output: the stream carried no content"
        return rec

    @classmethod
    def stream_line(cls, rec: RequestRecord, line: str, now: float, parts: list[str]) -> bool:
        """Take one line of a server-sent event stream into rec; True when the stream is over
        ([DONE] or an error)."""
        if not line.startswith("data:"):
            return False  # blank separators, SSE comments, event: lines
        data = line[5:].strip()
        if data == "[DONE]":
            return True
        cls._chunk(rec, json.loads(data), now, parts)
        return rec.error is not None

    @staticmethod
    def _chunk(rec: RequestRecord, obj: dict[str, Any], now: float, parts: list[str]) -> None:
        if obj.get("error"):
            err = obj["error"]
            rec.error = str(err.get("message", err) if isinstance(err, dict) else err)
            return
        for choice in obj.get("choices") or []:
            text = (choice.get("delta") or {}).get("content") if rec.api == "chat" else choice.get("text")
            if text:
                rec.chunk_times.append(now)
                parts.append(text)
            if choice.get("finish_reason"):
                rec.finish_reason = choice["finish_reason"]
        usage = obj.get("usage")
        if usage:
            rec.prompt_tokens = usage.get("prompt_tokens", rec.prompt_tokens)
            rec.completion_tokens = usage.get("completion_tokens", rec.completion_tokens)
            details = usage.get("prompt_tokens_details") or {}
            if details.get("cached_tokens") is not None:
                rec.cached_tokens = int(details["cached_tokens"])
        timings = obj.get("timings")  # llama.cpp reports its prompt-cache reuse here
        if isinstance(timings, dict) and rec.cached_tokens is None and "cache_n" in timings:
            rec.cached_tokens = int(timings["cache_n"])


def chat_messages(session: Session, turn: int, replies: list[str]) -> list[dict[str, str]]:
    """The whole conversation up to user turn `turn`, with the server's earlier replies."""
    msgs = [{"role": "system", "content": session.system}] if session.system is not None else []
    for k in range(turn):
        msgs += [{"role": "user", "content": session.turns[k]},
                 {"role": "assistant", "content": replies[k]}]
    msgs.append({"role": "user", "content": session.turns[turn]})
    return msgs


def arrival_delays(n: int, rate: float | None, seed: int) -> list[float]:
    """Start offsets of n sessions: all 0 (all at once) or a Poisson process at `rate`/s."""
    if rate is None or rate <= 0 or rate == float("inf"):
        return [0.0] * n
    rng = random.Random(f"radixrt-bench:arrivals:{seed}")
    t, out = 0.0, []
    for _ in range(n):
        out.append(t)
        t += rng.expovariate(rate)
    return out


async def run_workload(client: OpenAIClient, workload: Workload,
                       progress: Progress | None = None) -> RunResult:
    """Run every session of the workload; at most max_concurrency sessions at once."""
    sem = asyncio.Semaphore(workload.max_concurrency)
    delays = arrival_delays(len(workload.sessions), workload.request_rate, workload.seed)
    records: list[RequestRecord] = []
    started_at, t0 = time.time(), time.perf_counter()

    async def run_session(session: Session, delay: float) -> None:
        await asyncio.sleep(max(0.0, delay - (time.perf_counter() - t0)))
        async with sem:
            replies: list[str] = []
            failed: str | None = None
            for turn in range(len(session.turns)):
                rec = RequestRecord(workload=workload.name, sid=session.sid, turn=turn,
                                    api=session.api, group=session.group)
                records.append(rec)
                if failed is not None:  # a conversation cannot go on without its reply
                    rec.error = f"skipped: round {failed} failed"
                    rec.send_time = rec.end_time = time.perf_counter() - t0
                else:
                    body = (chat_messages(session, turn, replies) if session.api == "chat"
                            else session.turns[turn])
                    await client.send(rec, body, session.max_tokens, t0)
                    replies.append(rec.output_text)
                    if not rec.ok:
                        failed = str(turn)
                if progress is not None:
                    progress.update(rec.ok)

    await asyncio.gather(*(run_session(s, d) for s, d in zip(workload.sessions, delays, strict=True)))
    duration = max((r.end_time for r in records), default=0.0)
    records.sort(key=lambda r: (r.send_time, r.sid, r.turn))
    return RunResult(workload=workload.name, records=records, duration=duration,
                     started_at=started_at)


def main(argv: list[str] | None = None) -> int:
    """Run workloads against one server and print the metrics table."""
    from bench import metrics
    from bench.workloads import GENERATORS, build_workloads

    ap = argparse.ArgumentParser(prog="python -m bench.client", description=main.__doc__)
    ap.add_argument("--base-url", required=True, help="e.g. http://127.0.0.1:30000")
    ap.add_argument("--model", default=None, help="model name (default: the first of /v1/models)")
    ap.add_argument("--api-key", default=None)
    ap.add_argument("--workload", action="append", choices=list(GENERATORS),
                    help="repeatable (default: all)")
    ap.add_argument("--preset", default="quick", choices=["quick", "full"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tokenizer", default=None,
                    help="HF tokenizer dir to size prompts (default: the radixrt default model's)")
    ap.add_argument("--no-ignore-eos", action="store_true",
                    help="do not send ignore_eos (for servers that reject unknown fields)")
    ap.add_argument("--output", default=None, help="write the results JSON here")
    args = ap.parse_args(argv)

    tokenizer = load_tokenizer(args.tokenizer)
    workloads = build_workloads(args.workload or list(GENERATORS), args.preset, args.seed, tokenizer)

    async def go() -> list[RunResult]:
        async with OpenAIClient(args.base_url, args.model, args.api_key,
                                ignore_eos=not args.no_ignore_eos) as client:
            return [await run_workload(client, w, Progress(w.name, w.num_requests))
                    for w in workloads]

    results = asyncio.run(go())
    summaries = [metrics.summarize(r, w) for r, w in zip(results, workloads, strict=True)]
    print(metrics.markdown_table(summaries))
    if args.output:
        with open(args.output, "w") as f:
            json.dump({"summaries": summaries, "runs": [r.to_dict() for r in results]}, f)
    return 0


def load_tokenizer(path: str | None) -> Any:
    """The given HF tokenizer, else the default model's; None if neither loads (word counts)."""
    try:
        from transformers import AutoTokenizer

        if path is None:
            from radixrt.default_model import default_model_dir

            path = str(default_model_dir())
        return AutoTokenizer.from_pretrained(path)
    except Exception as e:  # sizing by words is a fine fallback for a load generator
        print(f"[bench] no tokenizer ({type(e).__name__}: {e}); sizing prompts by words",
              file=sys.stderr)
        return None


if __name__ == "__main__":
    raise SystemExit(main())
