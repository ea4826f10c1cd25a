"""Shared-prefix workload through radixrt.Engine: radix cache on vs off, in one run.

    python -m bench.bench_engine_prefix                       # default model, quick sizes
    python -m bench.bench_engine_prefix --groups 8 --prompts 16 --prefix 2048 --out r.json

G groups x P prompts; each prompt is its group's shared system prompt (--prefix tokens) plus
its own question (--question tokens); --output tokens are generated greedily with ignore_eos
so both modes do identical work. All prompts are submitted at once (one batch call).
Reports wall time, token throughput, the cache hit rate and the on/off ratio.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np


def make_prompts(groups: int, prompts: int, prefix: int, question: int, seed: int,
                 vocab: int = 49152) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    # Ids >= 100 skip SmolLM2's special tokens, so every prompt is ordinary text-like input.
    systems = [rng.integers(100, vocab, prefix).tolist() for _ in range(groups)]
    out = [systems[g] + rng.integers(100, vocab, question).tolist()
           for p in range(prompts) for g in range(groups)]
    return out  # interleaved groups: arrival order does not favour the cache


def run_mode(model: str | None, prompts: list[list[int]], output: int, disable: bool,
             options: dict) -> dict:
    from radixrt import Engine

    label = "cache off" if disable else "cache on"
    print(f"[{label}] starting engine ...", file=sys.stderr, flush=True)
    with Engine(model, disable_radix_cache=disable, **options) as engine:
        # Warm-up outside the timing (first-call allocations, thread pools).
        engine.generate(input_ids=[1, 2, 3], sampling_params={"max_new_tokens": 2})
        engine.flush_cache()
        print(f"[{label}] {len(prompts)} prompts ...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        outs = engine.generate(input_ids=prompts, sampling_params={
            "temperature": 0, "max_new_tokens": output, "ignore_eos": True})
        wall = time.perf_counter() - t0
        stats = engine.get_stats()
    prompt_tokens = sum(o["meta_info"]["prompt_tokens"] for o in outs)
    cached = sum(o["meta_info"]["cached_tokens"] for o in outs)
    completion = sum(o["meta_info"]["completion_tokens"] for o in outs)
    print(f"[{label}] {wall:.1f} s", file=sys.stderr, flush=True)
    return {
        "mode": label, "wall_s": wall, "requests_per_s": len(prompts) / wall,
        "input_tokens_per_s": prompt_tokens / wall, "output_tokens_per_s": completion / wall,
        "prompt_tokens": prompt_tokens, "cached_tokens": cached,
        "cache_hit_rate": cached / prompt_tokens, "steps": stats.steps,
        "scheduler_tick_s": stats.tick_seconds, "worker_s": stats.forward_seconds,
        "ipc_s": stats.ipc_seconds, "output_ids": [o["output_ids"] for o in outs],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default=None, help="model dir (default: the embedded model)")
    ap.add_argument("--groups", type=int, default=4)
    ap.add_argument("--prompts", type=int, default=8, help="prompts per group")
    ap.add_argument("--prefix", type=int, default=1024, help="shared system prompt tokens")
    ap.add_argument("--question", type=int, default=64)
    ap.add_argument("--output", type=int, default=16)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="write JSON results here")
    args = ap.parse_args()
    prompts = make_prompts(args.groups, args.prompts, args.prefix, args.question, args.seed)
    options = {"dtype": args.dtype, "max_total_tokens": 65536}
    on = run_mode(args.model, prompts, args.output, False, options)
    off = run_mode(args.model, prompts, args.output, True, options)
    same = on.pop("output_ids") == off.pop("output_ids")
    ratio = off["wall_s"] / on["wall_s"]
    print(f"\nshared prefix: {args.groups} groups x {args.prompts} prompts, prefix {args.prefix}, "
          f"question {args.question}, output {args.output}, {args.dtype}\n")
    print("| mode | wall s | req/s | input tok/s | output tok/s | cache hit rate | steps |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in (on, off):
        print(f"| {r['mode']} | {r['wall_s']:.1f} | {r['requests_per_s']:.2f} | "
              f"{r['input_tokens_per_s']:.0f} | {r['output_tokens_per_s']:.1f} | "
              f"{r['cache_hit_rate']:.1%} | {r['steps']} |")
    print(f"\nthroughput ratio (on / off): {ratio:.2f}x; identical outputs: {same}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"args": vars(args), "on": on, "off": off, "ratio": ratio,
                       "identical_outputs": same}, f, indent=2)


if __name__ == "__main__":
    main()
