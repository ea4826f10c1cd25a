"""In-process decode steps for `python -m bench.bench_decode --in-process` (see its help).

One ModelRunner per (attention backend, model dtype, KV-cache dtype): `batch` requests with
random prompts of `context` tokens are prefilled in chunks, then decode steps run at batch
`batch` (ModelRunner.step: forward + greedy sampling) and their median time is reported, with
the part spent in attention (the backend's plan + forward calls). --profile adds torch.profiler's
top ops of a few steps, attention labelled `attention`.
"""

from __future__ import annotations

import statistics
import time
from argparse import Namespace
from typing import Any

import numpy as np
import torch

from radixrt.config import build_engine_config
from radixrt.ipc.messages import ForwardBatch
from radixrt.worker.model_runner import ModelRunner

PREFILL_CHUNK = 1024


class TimedAttention:
    """Wraps a backend: accumulates the seconds of plan() and forward(), labels them for the
    profiler."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.seconds = 0.0

    def plan(self, meta: Any) -> None:
        t0 = time.perf_counter()
        with torch.profiler.record_function("attention"):
            self.inner.plan(meta)
        self.seconds += time.perf_counter() - t0

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer_id: int
                ) -> torch.Tensor:
        t0 = time.perf_counter()
        with torch.profiler.record_function("attention"):
            out = self.inner.forward(q, k, v, layer_id)
        self.seconds += time.perf_counter() - t0
        return out


def make_runner(model: str | None, backend: str, dtype: str, kv_dtype: str, batch: int,
                context: int, steps: int) -> ModelRunner:
    tokens = batch * (context + steps + 64)
    cfg = build_engine_config(model, device="cpu", dtype=dtype, attention_backend=backend,
                              kv_cache_dtype=kv_dtype, max_total_tokens=tokens,
                              max_running_requests=batch)
    runner = ModelRunner(cfg)
    runner.attn = TimedAttention(runner.attn)  # type: ignore[assignment]
    return runner


def prefill(runner: ModelRunner, batch: int, context: int, steps: int, seed: int
            ) -> np.ndarray:
    """Prefill `batch` random prompts; returns each request's first sampled token."""
    rng = np.random.default_rng(seed)
    per = -(-(context + steps + 1) // runner.page_size)
    pages = {i: list(range(i * per, (i + 1) * per)) for i in range(batch)}
    prompts = [rng.integers(3, runner.model_cfg.vocab_size, context).tolist()
               for _ in range(batch)]
    last = np.zeros(batch, np.int32)
    for i, prompt in enumerate(prompts):
        for start in range(0, context, PREFILL_CHUNK):
            chunk = prompt[start : start + PREFILL_CHUNK]
            fb = ForwardBatch.from_chunks([i], [start], [chunk],
                                          {i: pages[i]} if start == 0 else None)
            last[i] = runner.step(fb).next_ids[0]
    return last


def decode(runner: ModelRunner, last: np.ndarray, context: int, steps: int,
           profile: bool) -> dict[str, Any]:
    batch = len(last)
    times, attn = [], []
    pos = context
    prof = None
    warm = 3
    for s in range(warm + steps):
        if profile and s == warm:
            prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
            prof.__enter__()
        fb = ForwardBatch.from_chunks(list(range(batch)), [pos] * batch,
                                      [[int(t)] for t in last], step=s)
        runner.attn.seconds = 0.0  # type: ignore[attr-defined]
        t0 = time.perf_counter()
        last = runner.step(fb).next_ids
        if s >= warm:
            times.append(time.perf_counter() - t0)
            attn.append(runner.attn.seconds)  # type: ignore[attr-defined]
        pos += 1
    res: dict[str, Any] = {"step_ms": 1000 * statistics.median(times),
                           "attention_ms": 1000 * statistics.median(attn)}
    if prof is not None:
        prof.__exit__(None, None, None)
        avg = prof.key_averages()
        res["profile"] = avg.table(sort_by="self_cpu_time_total", row_limit=12)
        total = sum(e.self_cpu_time_total for e in avg)
        res["top_ops"] = [{"op": e.key, "self_ms_per_step": e.self_cpu_time_total / 1000 / steps,
                           "share": e.self_cpu_time_total / total}
                          for e in sorted(avg, key=lambda e: -e.self_cpu_time_total)[:12]]
    return res


def run_in_process(args: Namespace) -> list[dict[str, Any]]:
    if args.threads:
        torch.set_num_threads(args.threads)
    contexts = [int(x) for x in args.contexts.split(",")]
    batches = [int(x) for x in args.batch_sizes.split(",")]
    rows = []
    print(f"torch threads {torch.get_num_threads()}; median of {args.steps} decode steps")
    print("| Backend | dtype | KV | Context | Batch | Step ms | Attention ms |")
    print("|---|---|---|---|---|---|---|")
    for backend in args.backends.split(","):
        for dtype in args.dtypes.split(","):
            for kv in args.kv_dtypes.split(","):
                for ctx in contexts:
                    for b in batches:
                        runner = make_runner(args.model, backend, dtype, kv, b, ctx, args.steps + 3)
                        last = prefill(runner, b, ctx, args.steps + 3, seed=ctx + b)
                        res = decode(runner, last, ctx, args.steps, args.profile)
                        kv_name = runner.config.kv_dtype
                        row = {"backend": backend, "dtype": dtype, "kv_dtype": kv_name,
                               "context": ctx, "batch": b, **res}
                        rows.append(row)
                        print(f"| {backend} | {dtype} | {kv_name} | {ctx} | {b} | "
                              f"{res['step_ms']:.1f} | {res['attention_ms']:.1f} |", flush=True)
                        if args.profile:
                            print(res["profile"], flush=True)
                        del runner
    return rows
