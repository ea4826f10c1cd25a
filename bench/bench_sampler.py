"""Sampling one step's tokens (radixrt/worker/sampler.py: Sampler.sample) for a batch of
vocabulary-wide logits rows, per draw method, the methods interleaved rep by rep in one
process (medians):

    python -m bench.bench_sampler --batches 1,4,16 --vocab 49152 --reps 30

Settings: `greedy` (temperature 0), `temp` (temperature 0.7), `top_p` (0.7 with top-p 0.9),
`seeded` (0.7, a seed per request), `penalties` (0.7, frequency 0.3 and presence 0.5),
`repetition` (0.7, repetition 1.1); each request has a 500-token prompt and 300 tokens
generated before (a resumed request), for the penalties to count. Draws: `race` (argmax of p / E, a noise draw per
vocabulary entry) and `cdf` (one uniform per row against the running sum; the CPU default).
`--baseline-sampler FILE` adds another sampler.py (say, from a git worktree of an older
commit) as a `baseline` column, with its own defaults:

    python -m bench.bench_sampler --baseline-sampler /tmp/base/radixrt/worker/sampler.py
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.baseline import load_source
from radixrt.ipc.messages import NewSlot
from radixrt.sampling_params import SamplingParams
from radixrt.worker.sampler import Sampler

SETTINGS = {
    "greedy": {"temperature": 0.0},
    "temp": {"temperature": 0.7},
    "top_p": {"temperature": 0.7, "top_p": 0.9},
    "seeded": {"temperature": 0.7, "seed": 7},
    "penalties": {"temperature": 0.7, "frequency_penalty": 0.3, "presence_penalty": 0.5},
    "repetition": {"temperature": 0.7, "repetition_penalty": 1.1},
}


def load_sampler_class(file: str) -> type:
    """The Sampler of another sampler.py, with the penalties.py beside it (the two change
    together)."""
    penalties = Path(file).with_name("penalties.py")
    ours = sys.modules.get("radixrt.worker.penalties")
    if penalties.is_file():
        sys.modules["radixrt.worker.penalties"] = load_source("baseline_penalties", penalties)
    try:
        return load_source("baseline_sampler", file).Sampler
    finally:
        if ours is not None:
            sys.modules["radixrt.worker.penalties"] = ours


def make_sampler(vocab: int, batch: int, setting: str, draw: str,
                 baseline: type | None = None) -> Sampler:
    cpu = torch.device("cpu")
    s = baseline(vocab, cpu, 0) if draw == "baseline" and baseline else \
        Sampler(vocab, cpu, seed=0, draw=draw)
    rng = np.random.default_rng(batch)
    for slot in range(batch):
        s.add(NewSlot(slot, SamplingParams(**SETTINGS[setting]), eos_ids=(0,),
                      prompt_ids=rng.integers(0, vocab, 500).astype(np.int32),
                      output_ids=rng.integers(0, vocab, 300).astype(np.int32)))
    return s


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.bench_sampler", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", default="1,4,16")
    ap.add_argument("--vocab", type=int, default=49152)
    ap.add_argument("--settings", default=",".join(SETTINGS))
    ap.add_argument("--draws", default="race,cdf")
    ap.add_argument("--baseline-sampler", default=None, metavar="FILE")
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    draws = args.draws.split(",")
    baseline = None
    if args.baseline_sampler:
        baseline = load_sampler_class(args.baseline_sampler)
        draws.insert(0, "baseline")
    print(f"threads {torch.get_num_threads()}; ms per Sampler.sample call, median of "
          f"{args.reps}, draws interleaved")
    print("| Batch | Setting | " + " | ".join(f"{d} ms" for d in draws) + " |")
    print("|---|---|" + "---|" * len(draws))
    rows: list[dict[str, Any]] = []
    g = torch.Generator().manual_seed(0)
    for batch in (int(b) for b in args.batches.split(",")):
        logits = torch.randn(batch, args.vocab, generator=g) * 4
        slots = list(range(batch))
        for setting in args.settings.split(","):
            samplers = {d: make_sampler(args.vocab, batch, setting, d, baseline) for d in draws}
            times: dict[str, list[float]] = {d: [] for d in draws}
            for rep in range(args.reps + 1):
                for d, s in samplers.items():
                    t0 = time.perf_counter()
                    s.sample(logits, slots)
                    if rep:  # the first rep warms up
                        times[d].append(time.perf_counter() - t0)
            row = {"batch": batch, "setting": setting,
                   **{f"{d}_ms": 1e3 * statistics.median(times[d]) for d in draws}}
            rows.append(row)
            print(f"| {batch} | {setting} | "
                  + " | ".join(f"{row[f'{d}_ms']:.3f}" for d in draws) + " |", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
