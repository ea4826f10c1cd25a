"""Data parallel: does the prefix-affinity router keep the cache hit rate of one replica?

The multi-turn workload (bench/workloads.py) runs four times against real servers on
loopback: one replica alone; two replicas behind the router (cache_aware); the same two behind
round-robin (`--policy round_robin`); and cache_aware again with replica 1 SIGKILLed (its whole
process group, like a lost machine) when half of the requests are done. Caches are flushed
between runs. Hit rate = cached prompt tokens / prompt tokens, from the servers' own usage
(prompt_tokens_details.cached_tokens).

    python -m bench.bench_router                                   # default model
    python -m bench.bench_router --clients 8 --docs docs/benchmarks.md

--docs rewrites only the part of that file between ROUTER_BEGIN and ROUTER_END.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from bench import metrics
from bench.client import OpenAIClient, Progress, RunResult, load_tokenizer, run_workload
from bench.servers import ServerProcess, free_port, radixrt_cmd
from bench.workloads import Workload, multi_turn

ROOT = Path(__file__).resolve().parents[1]
ROUTER_BEGIN, ROUTER_END = "<!-- router:begin -->", "<!-- router:end -->"


class KillAt(Progress):
    """Progress that kills a replica once `at` requests are done (from the event loop)."""

    def __init__(self, label: str, total: int, at: int) -> None:
        super().__init__(label, total)
        self.at = at
        self.reached = asyncio.Event()

    def update(self, ok: bool) -> None:
        super().update(ok)
        if self.done >= self.at:
            self.reached.set()


def router_samples(url: str) -> dict[str, float]:
    out = {}
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith("radixrt_router_") and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def per_replica(samples: dict[str, float], metric: str, urls: list[str]) -> list[float]:
    return [samples.get(f'{metric}{{replica="{u}"}}', 0.0) for u in urls]


def flush(urls: list[str]) -> None:
    for u in urls:
        httpx.post(f"{u}/flush_cache", timeout=60).raise_for_status()


async def run(url: str, workload: Workload, label: str,
              kill: tuple[ServerProcess, str, str] | None = None) -> tuple[RunResult, dict]:
    """Run the workload against url; with kill=(replica, its url, router url), kill it at
    half-time and report what was in flight on it."""
    info: dict[str, Any] = {}
    progress = (KillAt(label, workload.num_requests, workload.num_requests // 2) if kill
                else Progress(label, workload.num_requests))
    async with OpenAIClient(url) as client:
        t0 = time.perf_counter()  # the run's clock starts with the task (record times)
        task = asyncio.ensure_future(run_workload(client, workload, progress))
        if kill is not None:
            assert isinstance(progress, KillAt)
            victim, victim_url, router_url = kill
            await progress.reached.wait()
            async with httpx.AsyncClient() as http:
                text = (await http.get(f"{router_url}/metrics")).text
            assert victim.proc is not None
            os.killpg(victim.proc.pid, signal.SIGKILL)
            info["kill_s"] = time.perf_counter() - t0
            info["done_at_kill"] = progress.done
            key = f'radixrt_router_requests_in_flight{{replica="{victim_url}"}}'
            info["in_flight_at_kill"] = next(float(line.rsplit(" ", 1)[1])
                                             for line in text.splitlines()
                                             if line.startswith(key))
        result = await task
    return result, info


def failures(result: RunResult, kill_s: float) -> dict[str, Any]:
    failed = [r for r in result.records if r.error and not r.error.startswith("skipped")]
    skipped = [r for r in result.records if r.error and r.error.startswith("skipped")]
    # The bench client records "HTTP <status>: <body>" for an error answer, and the
    # message of an error event that ended a started stream.
    answered = [r for r in failed if (r.error or "").startswith("HTTP ")]
    return {"failed": len(failed), "skipped": len(skipped),
            "failed_status": sorted({(r.error or "")[5:8] for r in answered}),
            "failed_before_output": len(answered),
            "failed_mid_stream": len(failed) - len(answered),
            "ok": sum(r.ok for r in result.records), "sent": len(result.records),
            "sent_after_kill": sum(r.send_time > kill_s for r in result.records
                                   if not (r.error or "").startswith("skipped")),
            "failed_after_kill": sum(r.send_time > kill_s for r in failed),
            "errors": sorted({(r.error or "")[:300] for r in failed})}


def start_router(urls: list[str], policy: str, logs: Path) -> ServerProcess:
    port = free_port()
    cmd = [sys.executable, "-m", "radixrt.router", "--port", str(port), "--policy", policy,
           "--health-interval", "0.5", "--worker-urls", *urls]
    # Not started: `with` starts it and waits until it is ready.
    return ServerProcess(f"router-{policy}", cmd, port, logs / f"router-{policy}.log")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.bench_router", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="model dir (default: the default model)")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per replica")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--first-turn-tokens", type=int, default=512)
    ap.add_argument("--turn-tokens", type=int, default=64)
    ap.add_argument("--output-tokens", type=int, default=32)
    ap.add_argument("--rate", type=float, default=2.0, help="client arrivals per second")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--results-dir", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--docs", type=Path, default=None,
                    help="markdown file whose router section to rewrite")
    args = ap.parse_args(argv)
    if args.model is None:
        from radixrt.default_model import default_model_dir

        args.model = str(default_model_dir())
    logs = args.results_dir / "router_logs"
    workload = multi_turn(num_clients=args.clients, num_rounds=args.rounds,
                          first_turn_tokens=args.first_turn_tokens, turn_tokens=args.turn_tokens,
                          output_tokens=args.output_tokens, request_rate=args.rate,
                          seed=args.seed, tokenizer=load_tokenizer(args.model))
    extra = ["--num-threads", str(args.threads)]
    replicas = [ServerProcess(f"replica{i}", radixrt_cmd(args.model, p, args.dtype, extra=extra),
                              p, logs / f"replica{i}.log").start()
                for i, p in enumerate([free_port(), free_port()])]
    urls = [r.base_url for r in replicas]
    rows: list[dict[str, Any]] = []
    started = time.time()
    try:
        for r in replicas:
            r.wait_ready()
        flush(urls)
        result, _ = asyncio.run(run(urls[0], workload, "one replica"))
        rows.append({"setup": "one replica", **_row(result, workload)})
        for policy in ("cache_aware", "round_robin"):
            flush(urls)
            with start_router(urls, policy, logs) as router:
                result, _ = asyncio.run(run(router.base_url, workload, policy))
                samples = router_samples(router.base_url)
            rows.append({"setup": f"two replicas, {policy}", **_row(result, workload),
                         "per_replica": per_replica(samples, "radixrt_router_requests_total",
                                                    urls),
                         "decisions": {k.split('"')[1]: v for k, v in samples.items()
                                       if k.startswith("radixrt_router_routing_decisions_total")}})
        flush(urls)
        with start_router(urls, "cache_aware", logs) as router:
            result, info = asyncio.run(run(router.base_url, workload, "kill",
                                           (replicas[1], urls[1], router.base_url)))
            samples = router_samples(router.base_url)
        kill = {**info, **failures(result, info["kill_s"]),
                "router_errors": {k: v for k, v in samples.items()
                                  if k.startswith("radixrt_router_request_errors_total")},
                "per_replica": per_replica(samples, "radixrt_router_requests_total", urls)}
    finally:
        for r in replicas:
            r.stop()
    base = rows[0]["cache_hit_rate"]
    for row in rows:
        row["vs_one_replica"] = row["cache_hit_rate"] / base if base else None
    out = {"started": started, "argv": sys.argv[1:] if argv is None else argv,
           "model": Path(args.model).name, "dtype": args.dtype,
           "workload": workload.summary(), "threads_per_replica": args.threads,
           "rows": rows, "kill": kill}
    args.results_dir.mkdir(parents=True, exist_ok=True)
    (args.results_dir / "router.json").write_text(json.dumps(out, indent=1) + "\n")
    text = render(out)
    print(text)
    if args.docs is not None:
        update_docs(args.docs, text)
    return 0


def _row(result: RunResult, workload: Workload) -> dict[str, Any]:
    s = metrics.summarize(result, workload)
    later = [r for r in result.records if r.ok and r.turn >= 1]
    return {"ok": s["completed"], "sent": s["num_requests"],
            "cache_hit_rate": s["cache_hit_rate"],
            "hit_rate_rounds_2plus": metrics.cache_hit_rate(later),
            "hit_rate_by_round": [v["cache_hit_rate"] for _, v in
                                  sorted(s["ttft_by_round"].items(), key=lambda kv: int(kv[0]))],
            "ttft_p50_ms": s["ttft_ms"]["p50"], "duration_s": s["duration_s"]}


def render(out: dict[str, Any]) -> str:
    w, k = out["workload"], out["kill"]
    lines = [
        "### Data parallel: prefix-affinity router vs round-robin",
        "",
        f"`python -m bench.bench_router {' '.join(out['argv'])}` "
        f"({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(out['started']))}). Workload: "
        f"{w['description']}. Replicas: {out['model']} ({out['dtype']}), "
        f"{out['threads_per_replica']} torch thread(s) each, on loopback (one CPU machine); "
        "caches flushed between runs. Hit rate: cached prompt "
        "tokens / prompt tokens, as the servers report them. Times depend on the machine and "
        "its load (the hit rates hardly do: only load-balancing decisions read the in-flight "
        "counts).",
        "",
        "| Setup | OK / sent | Cache hit rate | vs one replica | Rounds 2+ | By round "
        "| TTFT p50 (ms) | Duration (s) | Requests per replica |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in out["rows"]:
        per = " / ".join(f"{n:.0f}" for n in r.get("per_replica", [])) or "–"
        rounds = " / ".join(f"{x:.0%}" for x in r.get("hit_rate_by_round", []))
        lines.append(f"| {r['setup']} | {r['ok']} / {r['sent']} | {r['cache_hit_rate']:.1%} "
                     f"| {r['vs_one_replica']:.0%} | {r['hit_rate_rounds_2plus']:.1%} "
                     f"| {rounds} | {r['ttft_p50_ms']:.0f} | {r['duration_s']:.1f} | {per} |")
    ca = next(r for r in out["rows"] if "cache_aware" in r["setup"])
    decisions = ", ".join(f"{n} {v:.0f}" for n, v in sorted(ca["decisions"].items()))
    lines += [
        "",
        f"Routing decisions (cache_aware): {decisions}. Round-robin sends a conversation's "
        "next turn to a replica that has not seen it about half of the time in round 2; in "
        "later rounds it often returns to a replica that served an earlier turn, which still "
        "holds the long first message, so its loss is largest in round 2.",
        "",
        f"Replica killed mid-run (SIGKILL to its process group after {k['done_at_kill']} of "
        f"{k['sent']} requests): {k['in_flight_at_kill']:.0f} requests were in flight on it "
        f"(router metric read just before the kill); {k['failed']} requests failed: "
        f"{k['failed_before_output']} with an OpenAI-style error answer "
        f"({'/'.join(k['failed_status']) or 'none'}) before any output, {k['failed_mid_stream']} with an error event ending a started "
        f"stream. {k['skipped']} later rounds of those conversations were not sent (a "
        f"conversation cannot go on without its reply); the other {k['ok']} requests "
        f"succeeded. Of the {k['sent_after_kill']} requests sent after the kill, "
        f"{k['failed_after_kill']} failed (requests per replica: "
        f"{' / '.join(f'{n:.0f}' for n in k['per_replica'])}).",
    ]
    return "\n".join(lines)


def update_docs(path: Path, section: str) -> None:
    text = path.read_text()
    block = f"{ROUTER_BEGIN}\n{section}\n{ROUTER_END}"
    if ROUTER_BEGIN in text:
        head, rest = text.split(ROUTER_BEGIN, 1)
        text = head + block + rest.split(ROUTER_END, 1)[1]
    elif "<!-- notes:end -->" in text:  # inside run_suite's notes, which it keeps
        text = text.replace("<!-- notes:end -->", f"{block}\n\n<!-- notes:end -->", 1)
    else:
        text = text.rstrip("\n") + f"\n\n{block}\n"
    path.write_text(text)


if __name__ == "__main__":
    raise SystemExit(main())
