"""Where a served decode step goes: the worker's forward, the host time it waits on, and the
CPU each of the server's processes spends per step.

Starts radixrt's server (its real processes and sockets) and, per batch size, sends `batch`
streaming completions at once (greedy, ignore_eos, --output tokens each), each read by a
thread with http.client (a small client, so that it takes little of the machine). Reported
per step, over the decode phase:

  served ms      wall time of the round (its requests sent to their last chunk) per step
                 the scheduler ran in it: the same window and steps as forward ms (its
                 prefill step included: ~1/output of them)
  forward ms     the worker's own time per step (inputs applied, forward, sampling), from
                 the scheduler's step counters in /metrics
  exposed ms     the time the worker sat idle between back-to-back steps waiting for the host
  CPU ms         per step, of each server process (the worker's main thread and its other
                 threads apart) and of this client, from /proc

On a machine whose cores the worker's torch threads fill, every other process's CPU comes out
of the worker's share: served - forward is what the serving path costs a step.

    python -m bench.bench_served_overhead [--batch-sizes 1,4] [--output 256] [--json out.json]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import threading
import time
from pathlib import Path
from typing import Any

from bench.cpu import machine_info, tree_thread_cpu
from bench.servers import ServerProcess, free_port, radixrt_cmd, scrape_metrics

# `python -m MODULE` -> role; the first match wins (the sandbox is the tokenizer's child).
ROLES = (("radixrt.launch_server", "frontend"), ("radixrt.tokenizer.template_sandbox", "sandbox"),
         ("radixrt.tokenizer", "tokenizer"), ("radixrt.scheduler", "scheduler"),
         ("radixrt.worker", "worker"))
COLUMNS = ("worker main", "worker threads", "scheduler", "tokenizer", "frontend", "client")
STEP_COUNTERS = ("radixrt_steps_total", "radixrt_step_forward_seconds_total",
                 "radixrt_exposed_host_seconds_total", "radixrt_exposed_host_steps_total")


def role_of(argv: list[str]) -> str | None:
    module = argv[argv.index("-m") + 1] if "-m" in argv[:-1] else ""
    return next((r for prefix, r in ROLES if module.startswith(prefix)), None)


def renice(root: int, nice: dict[str, int]) -> None:
    """Set the nice value of the server's processes by role (every thread of each)."""
    for argv, threads in (tree_thread_cpu(root) or {}).values():
        if (n := nice.get(role_of(argv) or "")) is not None:
            for tid in threads:
                os.setpriority(os.PRIO_PROCESS, tid, n)


def role_cpu(root: int) -> dict[str, float]:
    """CPU-seconds so far of the server's processes by role (see COLUMNS) and of this one."""
    tree = tree_thread_cpu(root) or {}
    out = dict.fromkeys(COLUMNS, 0.0)
    for pid, (argv, threads) in tree.items():
        role = role_of(argv)
        if role == "worker":
            out["worker main"] += threads.get(pid, 0.0)
            out["worker threads"] += sum(s for tid, s in threads.items() if tid != pid)
        elif role in out:
            out[role] += sum(threads.values())
    out["client"] = time.process_time()
    return out


def step_counters(base_url: str) -> dict[str, float]:
    """The scheduler's cumulative step counters from /metrics."""
    samples = scrape_metrics(base_url)
    missing = set(STEP_COUNTERS) - samples.keys()
    if missing:
        raise RuntimeError(f"/metrics lacks {sorted(missing)}")
    return {k: samples[k] for k in STEP_COUNTERS}


def stream(port: int, prompt: str, output: int, times: list[float]) -> None:
    """One streamed completion; appends the arrival time of every content chunk to times."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    body = {"model": "default", "prompt": prompt, "max_tokens": output, "temperature": 0,
            "ignore_eos": True, "stream": True}
    conn.request("POST", "/v1/completions", json.dumps(body),
                 {"Content-Type": "application/json"})
    resp = conn.getresponse()
    if resp.status != 200:
        raise RuntimeError(f"HTTP {resp.status}: {resp.read()[:300]!r}")
    while line := resp.readline():
        if line.startswith(b"data: {"):
            times.append(time.perf_counter())
    conn.close()


def measure(server: ServerProcess, batch: int, output: int, rounds: int) -> dict[str, Any]:
    """Median over rounds of each round's figures (batch streams at once per round)."""
    assert server.proc is not None
    per_round = []
    for r in range(rounds):
        times: list[list[float]] = [[] for _ in range(batch)]
        threads = [threading.Thread(target=stream, args=(
            server.port, f"Round {r}, story {i}: once upon a time", output, times[i]))
            for i in range(batch)]
        c0, cpu0 = step_counters(server.base_url), role_cpu(server.proc.pid)
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        c1, cpu1 = step_counters(server.base_url), role_cpu(server.proc.pid)
        if any(len(t) < 2 for t in times):
            raise RuntimeError("a stream ended before its second chunk")
        d = {k: c1[k] - c0[k] for k in STEP_COUNTERS}
        steps = d["radixrt_steps_total"]
        # The counters cover every step of the round, its prefill too: the wall time is
        # taken over the same window (first chunk to last would leave the prefill out and
        # could read less than the forward time it contains).
        served = (max(t[-1] for t in times) - t0) / steps
        row = {"served_ms": served * 1e3,
               "forward_ms": d["radixrt_step_forward_seconds_total"] / steps * 1e3,
               "exposed_ms": (d["radixrt_exposed_host_seconds_total"]
                              / max(d["radixrt_exposed_host_steps_total"], 1) * 1e3),
               "steps": steps}
        row.update({f"cpu_ms {k}": (cpu1[k] - cpu0[k]) / steps * 1e3 for k in COLUMNS})
        per_round.append(row)
    return {"batch": batch, "output": output, "rounds": rounds,
            **{k: statistics.median(r[k] for r in per_round) for k in per_round[0]}}


def table(rows: list[dict[str, Any]]) -> str:
    head = ["Batch", "served ms/step", "forward ms/step", "exposed host ms/step",
            *(f"{c} CPU ms/step" for c in COLUMNS)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [str(r["batch"]), f"{r['served_ms']:.2f}", f"{r['forward_ms']:.2f}",
                 f"{r['exposed_ms']:.2f}", *(f"{r[f'cpu_ms {c}']:.2f}" for c in COLUMNS)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="model dir (default: the embedded model)")
    ap.add_argument("--batch-sizes", default="1,4")
    ap.add_argument("--output", type=int, default=256, help="tokens per stream")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--server-arg", action="append", default=[],
                    help="extra launch_server argument (repeatable), e.g. --server-arg=--dtype=auto")
    ap.add_argument("--nice", action="append", default=[], metavar="ROLE=N",
                    help="after start, the nice value of a process role (frontend, tokenizer, "
                         "scheduler, worker; repeatable)")
    ap.add_argument("--log", default="/tmp/radixrt_bench_served_overhead.log")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if args.output < 2:
        raise SystemExit("--output must be at least 2 (a step is the gap between two tokens)")
    if args.model is None:
        from radixrt.default_model import default_model_dir
        args.model = str(default_model_dir())
    port = free_port()
    cmd = radixrt_cmd(args.model, port, dtype="auto", extra=args.server_arg)
    rows = []
    nice = {role: int(n) for role, _, n in (x.partition("=") for x in args.nice)}
    with ServerProcess("radixrt", cmd, port, Path(args.log)) as server:
        assert server.proc is not None
        renice(server.proc.pid, nice)
        stream(port, "warm up", 4, [])
        for b in (int(x) for x in args.batch_sizes.split(",")):
            print(f"batch {b}: {args.rounds} rounds of {args.output} tokens...", flush=True)
            rows.append(measure(server, b, args.output, args.rounds))
    print(f"\n`{' '.join(cmd[1:])}`; medians over rounds\n")
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine_info(), "command": cmd,
                                               "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
