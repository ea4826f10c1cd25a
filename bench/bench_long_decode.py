"""Decode late in long replies, through the real scheduler (LocalEngine: Scheduler + ModelRunner,
no sockets): the median step time over the last steps, and how many runs of consecutive KV
pages each request's page table has by then (attention streams each run; docs/benchmarks.md,
"CPU: contiguous KV pages").

`--baseline-allocator FILE` loads another page_allocator.py (say, from a git worktree of an
older commit) and runs it against this tree's in the same process, rounds alternated, so a
noisy machine slows both alike:

    git worktree add /tmp/base <commit>
    python -m bench.bench_long_decode --batch 16 --prompt 32 --new 700 --last 100 --rounds 2 \
        --baseline-allocator /tmp/base/radixrt/scheduler/page_allocator.py
"""

from __future__ import annotations

import argparse
import inspect
import json
import random
import statistics
import time
from typing import Any

import numpy as np

from bench.baseline import load_source
from radixrt.config import build_engine_config
from radixrt.scheduler.page_allocator import PageAllocator
from radixrt.testing.local_engine import LocalEngine
from radixrt.worker.model_runner import ModelRunner


def load_allocator(file: str) -> type:
    """The PageAllocator class of another page_allocator.py; an allocator without the `after`
    hint takes and ignores it."""
    module = load_source("baseline_page_allocator", file)
    takes_hint = "after" in inspect.signature(module.PageAllocator.alloc).parameters

    class Baseline(module.PageAllocator):  # type: ignore[name-defined, misc]
        def alloc(self, n: int, after: int | None = None) -> np.ndarray:
            return super().alloc(n, after) if takes_hint else super().alloc(n)

    return Baseline


def page_runs(pages: np.ndarray) -> int:
    return 1 + int(np.count_nonzero(np.diff(pages) != 1)) if len(pages) else 0


def run_once(engine: LocalEngine, args: argparse.Namespace, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    for i in range(args.batch):
        engine.add(f"r{i}", [rng.randrange(100, 30000) for _ in range(args.prompt)],
                   {"max_new_tokens": args.new, "ignore_eos": True})
    s = engine.scheduler
    times: list[float] = []
    runs: list[int] = []
    while s.running or s.waiting:
        t0 = time.perf_counter()
        engine.step()
        times.append(time.perf_counter() - t0)
        if len(times) == args.new - 2:  # every request still running, its pages all there
            runs = [page_runs(r.pages) for r in s.running]
        if len(times) % 100 == 0:
            print(f"  step {len(times)}/{args.new}", flush=True)
    late = times[-args.last - 2 : -2]  # the final steps finish requests: leave them out
    return {"step_ms": 1e3 * statistics.median(late), "runs_per_request": runs}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.bench_long_decode", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="model dir (default: radixrt's)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--prompt", type=int, default=32, help="prompt tokens per request")
    ap.add_argument("--new", type=int, default=700, help="tokens each request generates")
    ap.add_argument("--last", type=int, default=100, help="steps timed at the end")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--baseline-allocator", default=None, metavar="FILE")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if not 0 < args.last < args.new - 2:
        ap.error("--last must be positive and below --new minus 2")
    config = build_engine_config(args.model, max_total_tokens=2 * args.batch
                                 * (args.prompt + args.new + 64))
    runner = ModelRunner(config)
    variants: dict[str, type] = {"this tree": PageAllocator}
    if args.baseline_allocator:
        variants["baseline"] = load_allocator(args.baseline_allocator)
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
    for rnd in range(args.rounds):
        order = list(variants) if rnd % 2 == 0 else list(variants)[::-1]
        for name in order:
            engine = LocalEngine(config, runner)
            engine.scheduler.kv.allocator = variants[name](engine.scheduler.num_pages)
            print(f"round {rnd + 1}/{args.rounds}, {name}:", flush=True)
            res = run_once(engine, args, seed=rnd)
            results[name].append(res)
            print(f"  {res['step_ms']:.1f} ms per step (median of the last {args.last}); "
                  f"page runs per request {statistics.median(res['runs_per_request']):g}",
                  flush=True)
    print(f"\nbatch {args.batch}, prompt {args.prompt}, {args.new} new tokens each; "
          f"ms per step over the last {args.last} steps")
    print("| Allocator | " + " | ".join(f"round {i + 1}" for i in range(args.rounds))
          + " | Page runs per request |")
    print("|---|" + "---|" * (args.rounds + 1))
    for name, rows in results.items():
        print(f"| {name} | " + " | ".join(f"{r['step_ms']:.1f}" for r in rows)
              + f" | {statistics.median(rows[0]['runs_per_request']):g} |")
    if args.baseline_allocator:
        ratios = [t["step_ms"] / b["step_ms"]
                  for t, b in zip(results["this tree"], results["baseline"])]
        print("this tree / baseline per round: " + ", ".join(f"{r:.3f}" for r in ratios))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
