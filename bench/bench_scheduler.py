"""Micro-benchmark: scheduler CPU time per step, with a dummy model (no forward pass at all).

For each batch size, B requests (prompt_len tokens each, distinct) are admitted and prefilled,
then `steps` steady-state decode steps are timed: schedule() + a fake StepResult (random token
ids) + process_result(). That is the scheduler's whole share of a decode step; on a 2-core CPU a
135M model's decode step is ~45 ms at batch 1 and ~120 ms at batch 8, so the scheduler should
stay well under a millisecond or two.

A second measurement, "churn", has requests finish and new ones arrive every step (each request
generates few tokens), so admission, radix-cache matching/insertion and release are timed too.

    python -m bench.bench_scheduler [--batch-sizes 1,32,128] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import numpy as np

from radixrt.config import EngineConfig
from radixrt.ipc.messages import GenerateReq, StepResult
from radixrt.model_info import ModelInfo
from radixrt.sampling_params import SamplingParams
from radixrt.scheduler.scheduler import Scheduler

VOCAB = 49152
EOS = (2,)


class DummyModel:
    """Stands in for the worker: a random non-EOS token wherever the batch samples."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)

    def step(self, batch: Any) -> StepResult:
        ids = self.rng.integers(3, VOCAB, size=batch.batch_size, dtype=np.int32)
        return StepResult(step=batch.step, next_ids=np.where(batch.sample, ids, -1))


def make_scheduler(batch: int, prompt_len: int, max_new: int, cache: bool) -> Scheduler:
    cfg = EngineConfig(model_path="", disable_radix_cache=not cache,
                       max_running_requests=max(batch, 1), max_queued_requests=1 << 20)
    pages = (batch * 2 + 8) * -(-(prompt_len + max_new + 32) // cfg.page_size)
    info = ModelInfo(context_length=1 << 20, vocab_size=VOCAB, eos_token_ids=EOS)
    return Scheduler(cfg, info, num_pages=pages)


def add(s: Scheduler, rid: str, prompt_len: int, max_new: int, rng: np.random.Generator) -> None:
    ids = rng.integers(3, VOCAB, size=prompt_len).tolist()
    s.add_request(GenerateReq(rid, ids, SamplingParams(max_new_tokens=max_new, temperature=0.0,
                                                       ignore_eos=True)))


def one_step(s: Scheduler, model: DummyModel) -> bool:
    batch = s.schedule()
    if batch is None:
        s.collect_outputs()
        return False
    s.process_result(model.step(batch))
    return True


def decode_steady(batch: int, prompt_len: int, steps: int, cache: bool) -> dict[str, float]:
    rng = np.random.default_rng(1)
    s = make_scheduler(batch, prompt_len, steps + 64, cache)
    model = DummyModel()
    for i in range(batch):
        add(s, f"r{i}", prompt_len, steps + 64, rng)
    while not (len(s.running) == batch and all(r.is_decoding for r in s.running)):
        one_step(s, model)  # admission and prefill: not timed here
    wall0, cpu0 = time.perf_counter(), time.process_time()
    for _ in range(steps):
        one_step(s, model)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    return {"us_per_step": 1e6 * wall / steps, "cpu_us_per_step": 1e6 * cpu / steps,
            "us_per_token": 1e6 * wall / (steps * batch)}


def churn(batch: int, prompt_len: int, steps: int, cache: bool, output_len: int = 8) -> dict[str, float]:
    """Requests of output_len tokens, topped up to `batch` in flight: finish + admit each step."""
    rng = np.random.default_rng(2)
    s = make_scheduler(batch, prompt_len, output_len, cache)
    model = DummyModel()
    n = 0
    # Warm up to a steady mix, then time.
    for phase in ("warm", "timed"):
        wall0, cpu0 = time.perf_counter(), time.process_time()
        for _ in range(steps if phase == "timed" else output_len * 2):
            while len(s.waiting) + len(s.running) < batch:
                add(s, f"c{n}", prompt_len, output_len, rng)
                n += 1
            one_step(s, model)
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    return {"us_per_step": 1e6 * wall / steps, "cpu_us_per_step": 1e6 * cpu / steps}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.bench_scheduler", description=__doc__)
    ap.add_argument("--batch-sizes", default="1,32,128")
    ap.add_argument("--prompt-len", type=int, default=256)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args(argv)

    rows = []
    print("| Batch | Radix cache | decode step (µs) | per token (µs) | churn step (µs) |")
    print("|---|---|---|---|---|")
    for b in (int(x) for x in args.batch_sizes.split(",")):
        for cache in (True, False):
            d = decode_steady(b, args.prompt_len, args.steps, cache)
            c = churn(b, args.prompt_len, args.steps, cache)
            rows.append({"batch": b, "cache": cache, "decode": d, "churn": c})
            print(f"| {b} | {'on' if cache else 'off'} | {d['us_per_step']:,.0f} "
                  f"| {d['us_per_token']:,.1f} | {c['us_per_step']:,.0f} |", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"prompt_len": args.prompt_len, "steps": args.steps, "rows": rows}, f,
                      indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
