"""Overlap scheduling on vs off through radixrt.Engine (real processes and sockets), A/B in
one run: engines alternate per round (ABBA...), each round a fresh engine on the same work.

    python -m bench.bench_overlap                       # default model, quick sizes
    python -m bench.bench_overlap --batch 8 --output 64 --rounds 4 --out r.json

Each round submits --batch prompts of --prompt tokens at once and generates --output tokens
greedily (ignore_eos), so both modes do identical work. Reported per mode (medians over
rounds): wall time, output tokens/s, worker time per step, and the exposed host time per step
(`SchedulerStats.exposed_host_ms_per_step`: how long the worker waited for its next step
while the scheduler had work, i.e. the scheduler + IPC time overlap did not hide).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import numpy as np


def run_round(model: str | None, prompts: list[list[int]], output: int, overlap: bool,
              options: dict) -> dict:
    from radixrt import Engine

    with Engine(model, disable_overlap_schedule=not overlap, **options) as engine:
        engine.generate(input_ids=[5, 6, 7], sampling_params={"max_new_tokens": 4})  # warm-up
        engine.flush_cache()
        s0 = engine.get_stats()
        t0 = time.perf_counter()
        outs = engine.generate(input_ids=prompts, sampling_params={
            "temperature": 0, "max_new_tokens": output, "ignore_eos": True})
        wall = time.perf_counter() - t0
        s1 = engine.get_stats()
    steps = s1.steps - s0.steps
    exposed_steps = s1.exposed_steps - s0.exposed_steps
    return {
        "overlap": overlap, "wall_s": wall, "steps": steps,
        "output_tokens_per_s": sum(o["meta_info"]["completion_tokens"] for o in outs) / wall,
        "worker_ms_per_step": 1e3 * (s1.forward_seconds - s0.forward_seconds) / max(1, steps),
        "scheduler_ms_per_step": 1e3 * (s1.tick_seconds - s0.tick_seconds) / max(1, steps),
        "exposed_host_ms_per_step":
            1e3 * (s1.exposed_seconds - s0.exposed_seconds) / max(1, exposed_steps),
        "output_ids": [o["output_ids"] for o in outs],
    }


def summarize(rows: list[dict]) -> dict:
    keys = ["wall_s", "output_tokens_per_s", "worker_ms_per_step", "scheduler_ms_per_step",
            "exposed_host_ms_per_step"]
    return {k: statistics.median(r[k] for r in rows) for k in keys} | {
        "rounds": len(rows), "steps": rows[0]["steps"]}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default=None, help="model dir (default: the embedded model)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--prompt", type=int, default=32)
    ap.add_argument("--output", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=2, help="rounds per mode (ABBA order)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--num-threads", type=int, default=None)
    ap.add_argument("--out", help="write JSON results here")
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    prompts = [rng.integers(100, 49152, args.prompt).tolist() for _ in range(args.batch)]
    options: dict = {"max_total_tokens": 4 * args.batch * (args.prompt + args.output + 16),
                     "device": args.device}
    if args.num_threads:
        options["num_threads"] = args.num_threads
    order = [(i % 4) in (0, 3) for i in range(2 * args.rounds)]  # on, off, off, on, ...
    rows: dict[bool, list[dict]] = {True: [], False: []}
    for overlap in order:
        r = run_round(args.model, prompts, args.output, overlap, options)
        print(f"[overlap {'on' if overlap else 'off'}] {r['wall_s']:.2f} s, "
              f"exposed {r['exposed_host_ms_per_step']:.2f} ms/step", file=sys.stderr,
              flush=True)
        rows[overlap].append(r)
    same = all(r["output_ids"] == rows[True][0]["output_ids"]
               for r in rows[True] + rows[False])
    on, off = summarize(rows[True]), summarize(rows[False])
    print(f"\noverlap A/B: batch {args.batch}, prompt {args.prompt}, output {args.output}, "
          f"{args.rounds} rounds per mode (medians)\n")
    print("| overlap | wall s | output tok/s | worker ms/step | scheduler ms/step | "
          "exposed host ms/step |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, r in (("on", on), ("off", off)):
        print(f"| {name} | {r['wall_s']:.2f} | {r['output_tokens_per_s']:.1f} | "
              f"{r['worker_ms_per_step']:.2f} | {r['scheduler_ms_per_step']:.3f} | "
              f"{r['exposed_host_ms_per_step']:.3f} |")
    speedup = off["wall_s"] / on["wall_s"]
    print(f"\nspeedup (off wall / on wall): {speedup:.3f}x; identical outputs: {same}")
    result = {"args": vars(args), "on": on, "off": off, "speedup": speedup,
              "identical_outputs": same}
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
