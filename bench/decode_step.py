"""In-process decode steps for `python -m bench.bench_decode --in-process` (see its help).

One ModelRunner per (attention backend, model dtype, KV-cache dtype, quantization): `batch`
requests with random prompts of `context` tokens are prefilled in chunks, then decode steps run
at batch `batch` (ModelRunner.step: forward + greedy sampling), the cases interleaved step by
step, and the median step time is reported with the parts spent in attention (the backend's
plan + forward calls) and in the linear layers (lm_head included), plus load time and weight
memory. --profile adds torch.profiler's top ops of a few steps, attention labelled
`attention` (the cpu backend's kernels are no torch ops).

A case's "fused" field: off (torch ops for norms and RoPE), on (their fused kernels, through
the nn.Module layers) or flat (the fused kernels in radixrt/models/cpu_flat.py's flat loop,
what the server runs on a CPU). A flat step calls no module hooks and the bare attention
backend, so it has no attention / linear split: those columns read nan.
"""

from __future__ import annotations

import contextlib
import gc
import os
import statistics
import time
from argparse import Namespace
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from radixrt.attention.base import AttentionBackend, Rope
from radixrt.config import build_engine_config
from radixrt.models import cpu_flat, dense_cpu, fused
from radixrt.testing.batches import batch_from_chunks
from radixrt.worker.model_runner import ModelRunner

PREFILL_CHUNK = 1024


class TimedAttention:
    """Wraps a backend: accumulates the seconds of plan() and forward(), labels them for the
    profiler."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.seconds = 0.0
        self.wants_page_lists = inner.wants_page_lists

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

    def forward_rope(self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
                     v: torch.Tensor, layer_id: int, rope: Rope) -> torch.Tensor:
        if type(self.inner).forward_rope is AttentionBackend.forward_rope:
            # RoPE outside the attention time, as the backend does it the base class's way.
            q, k = rope(positions, q, k)
            return self.forward(q, k, v, layer_id)
        t0 = time.perf_counter()  # a backend that rotates as it writes: timed as a whole
        with torch.profiler.record_function("attention"):
            out = self.inner.forward_rope(positions, q, k, v, layer_id, rope)
        self.seconds += time.perf_counter() - t0
        return out


class LinearTimer:
    """Seconds spent inside the model's linear layers (nn.Linear, DenseLinear or
    QuantizedLinear, lm_head included), via forward hooks: the part of a step that
    quantization changes."""

    def __init__(self, model: torch.nn.Module) -> None:
        from radixrt.models.dense_cpu import DenseLinear
        from radixrt.models.quant import QuantizedLinear

        self.seconds = 0.0
        self._t0 = 0.0
        for m in model.modules():
            if isinstance(m, (torch.nn.Linear, DenseLinear, QuantizedLinear)):
                m.register_forward_pre_hook(self._pre)
                m.register_forward_hook(self._post)

    def _pre(self, *_: object) -> None:
        self._t0 = time.perf_counter()

    def _post(self, *_: object) -> None:
        self.seconds += time.perf_counter() - self._t0


def weight_mib(model: torch.nn.Module) -> float:
    tensors = {t.data_ptr(): t for t in (*model.parameters(), *model.buffers()) if t is not None}
    return sum(t.numel() * t.element_size() for t in tensors.values()) / 2**20


@contextlib.contextmanager
def env_set(name: str, value: str | None) -> Iterator[None]:
    """$name = value inside the block (None: left as it is), restored after."""
    saved = os.environ.get(name)
    if value is not None:
        os.environ[name] = value
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = saved


def make_runner(model: str | None, backend: str, dtype: str, kv_dtype: str, quant: str,
                kv_layout: str, batch: int, context: int, steps: int
                ) -> tuple[ModelRunner, LinearTimer, float]:
    tokens = batch * (context + steps + 64)
    # "int4+det": with --deterministic's kernels; "none+torch": float linears on torch's
    # BLAS only (not radixrt's dense kernel where its probe found that faster); "none+wide":
    # a 16-bit checkpoint's matrices widened to float32 at load (not kept 16-bit).
    quant, _, mode = quant.partition("+")
    if mode not in ("", "det", "torch", "wide"):
        raise SystemExit(f"quantization {quant}+{mode}: the suffixes are +det, +torch, +wide")
    cfg = build_engine_config(model, device="cpu", dtype=dtype, attention_backend=backend,
                              kv_cache_dtype=kv_dtype, quantization=quant,
                              max_total_tokens=tokens, max_running_requests=batch,
                              kv_layout=kv_layout, deterministic=mode == "det")
    gc.collect()
    t0 = time.perf_counter()
    with (env_set(dense_cpu.ROWS_ENV, "0" if mode == "torch" else None),
          env_set(dense_cpu.WEIGHTS_ENV, "1" if mode == "wide" else None)):
        runner = ModelRunner(cfg)
    load_s = time.perf_counter() - t0
    runner.attn = TimedAttention(runner.attn)  # type: ignore[assignment]
    return runner, LinearTimer(runner.model), load_s


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
            fb = batch_from_chunks([i], [start], [chunk],
                                          {i: pages[i]} if start == 0 else None)
            last[i] = runner.step(fb).next_ids[0]
    return last


def set_mode(mode: str) -> None:
    """A case's "fused" mode (off / on / flat) as the process-wide switches."""
    fused.enabled = mode != "off"
    cpu_flat.enabled = mode == "flat"


def decode_step(runner: ModelRunner, last: np.ndarray, pos: int, step: int, flat: bool = False
                ) -> tuple[np.ndarray, float, float]:
    """One decode step of every request: (next tokens, step seconds, attention seconds); the
    linear layers' seconds accumulate in the runner's LinearTimer. flat: the step runs on the
    bare backend (the flat loop takes no wrapper), attention seconds nan."""
    batch = len(last)
    fb = batch_from_chunks(list(range(batch)), [pos] * batch, [[int(t)] for t in last],
                                  step=step)
    timed = runner.attn
    timed.seconds = 0.0  # type: ignore[attr-defined]
    if flat:
        runner.attn = timed.inner  # type: ignore[attr-defined]
    try:
        t0 = time.perf_counter()
        nxt = runner.step(fb).next_ids
        sec = time.perf_counter() - t0
    finally:
        runner.attn = timed
    return nxt, sec, float("nan") if flat else timed.seconds  # type: ignore[attr-defined]


def profile_steps(runner: ModelRunner, last: np.ndarray, pos: int, steps: int
                  ) -> dict[str, Any]:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for s in range(steps):
            last, _, _ = decode_step(runner, last, pos + s, s)
    avg = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in avg)
    return {"profile": avg.table(sort_by="self_cpu_time_total", row_limit=12),
            "top_ops": [{"op": e.key, "self_ms_per_step": e.self_cpu_time_total / 1000 / steps,
                         "share": e.self_cpu_time_total / total}
                        for e in sorted(avg, key=lambda e: -e.self_cpu_time_total)[:12]]}


def run_in_process(args: Namespace) -> list[dict[str, Any]]:
    """Every case (backend x dtype x KV dtype x quantization) at each context and batch; the
    cases' decode steps interleaved round by round, so that a busy neighbour slows every case
    alike."""
    was = fused.enabled, cpu_flat.enabled  # the cases flip process-wide switches
    try:
        return _run_cases(args)
    finally:
        fused.enabled, cpu_flat.enabled = was


def _run_cases(args: Namespace) -> list[dict[str, Any]]:
    if args.threads:
        torch.set_num_threads(args.threads)
    # Fused mode per case (process-wide switches, set before each case's step).
    if args.case:  # explicit cases: backend:dtype:kv_dtype:quantization:fused[:kv_layout]
        cases_fused = []
        for spec in args.case:
            b, d, k, q, f, *layout = spec.split(":")
            cases_fused.append(((b, d, k, q, layout[0] if layout else "auto"), f))
    else:
        cases_fused = [((b, d, k, q, "auto"), f) for b in args.backends.split(",")
                       for d in args.dtypes.split(",") for k in args.kv_dtypes.split(",")
                       for q in args.quantizations.split(",") for f in args.fused.split(",")]
    for _, f in cases_fused:
        if f not in ("off", "on", "flat"):
            raise SystemExit(f"fused mode {f!r}: choose off, on or flat")
    cases = [c for c, _ in cases_fused]
    rows = []
    print(f"torch threads {torch.get_num_threads()}; median of {args.steps} decode steps, "
          f"cases interleaved")
    print("| Backend | dtype | KV | Quant | Fused | Context | Batch | Step ms | Attention ms "
          "| Linear ms | min step ms | load s | weights MiB | prefill tok/s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    warm = 3
    for ctx in (int(x) for x in args.contexts.split(",")):
        for b in (int(x) for x in args.batch_sizes.split(",")):
            total = warm + args.steps + (5 if args.profile else 0)
            built = [make_runner(args.model, *c, b, ctx, total) for c in cases]
            runners = [r for r, _, _ in built]
            lasts, prefill_s = [], []
            for r, (_, f) in zip(runners, cases_fused):
                set_mode(f)
                t0 = time.perf_counter()
                lasts.append(prefill(r, b, ctx, total, seed=ctx + b))
                prefill_s.append(time.perf_counter() - t0)
            times: list[list[tuple[float, float, float]]] = [[] for _ in cases]
            flat_before = [cpu_flat.flat_steps(r.model) for r in runners]
            for s in range(warm + args.steps):
                for i, (r, timer, _) in enumerate(built):
                    mode = cases_fused[i][1]
                    set_mode(mode)
                    timer.seconds = 0.0
                    lasts[i], sec, attn = decode_step(r, lasts[i], ctx + s, s, mode == "flat")
                    if s >= warm:
                        lin = float("nan") if mode == "flat" else timer.seconds
                        times[i].append((sec, attn, lin))
            for i, (backend, dtype, _kv, quant_case, _layout) in enumerate(cases):
                step = [t[0] for t in times[i]]
                mode = cases_fused[i][1]
                if mode == "flat" and cpu_flat.flat_steps(runners[i].model) == flat_before[i]:
                    mode = "on (no flat loop for this case)"  # e.g. torch attention, biases
                row: dict[str, Any] = {
                    "backend": backend, "dtype": dtype, "kv_dtype": runners[i].config.kv_dtype,
                    "kv_layout": "head" if runners[i].pool.head_major else "token",
                    "quantization": runners[i].config.quantization
                    + quant_case[quant_case.find("+"):] * ("+" in quant_case),
                    "fused": mode,
                    "context": ctx, "batch": b, "step_ms": 1000 * statistics.median(step),
                    "min_step_ms": 1000 * min(step),
                    "attention_ms": 1000 * statistics.median(t[1] for t in times[i]),
                    "linear_ms": 1000 * statistics.median(t[2] for t in times[i]),
                    "load_s": built[i][2], "weights_mib": weight_mib(runners[i].model),
                    "prefill_tok_s": b * ctx / prefill_s[i]}
                print(f"| {backend} | {dtype} | {row['kv_dtype']} {row['kv_layout']} | "
                      f"{row['quantization']} | "
                      f"{row['fused']} | {ctx} | {b} | {row['step_ms']:.1f} | "
                      f"{row['attention_ms']:.1f} | "
                      f"{row['linear_ms']:.1f} | {row['min_step_ms']:.1f} | "
                      f"{row['load_s']:.1f} | {row['weights_mib']:.0f} | "
                      f"{row['prefill_tok_s']:.0f} |", flush=True)
                rows.append(row)
            if args.profile:
                for i, row in enumerate(rows[-len(cases):]):
                    set_mode(cases_fused[i][1])
                    row.update(profile_steps(runners[i], lasts[i], ctx + warm + args.steps, 5))
                    print(f"\n{row['backend']} {row['dtype']} KV {row['kv_dtype']}, "
                          f"context {ctx}, batch {b}: top ops of 5 steps")
                    print(row["profile"], flush=True)
            del runners, built
    return rows
