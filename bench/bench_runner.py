"""In-process decode / prefill timing of ModelRunners (python -m bench.bench_decode --in-process).

For every (quantization, dtype) case a ModelRunner is built (load time, weight bytes, RSS
growth), --batch-sizes requests are prefilled to --contexts tokens each, then decode steps
of all of them together are timed, the cases' steps interleaved round by round so that a busy
neighbour slows every case alike. A prefill of --prefill-tokens tokens (one request, one
step, over an empty cache) is timed the same way. Medians, with the minimum beside them.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from bench.cpu import CpuMonitor
from radixrt.config import EngineConfig, build_engine_config
from radixrt.ipc.messages import ForwardBatch
from radixrt.worker.model_runner import ModelRunner


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def weight_bytes(model: torch.nn.Module) -> int:
    tensors = {t.data_ptr(): t for t in (*model.parameters(), *model.buffers()) if t is not None}
    return sum(t.numel() * t.element_size() for t in tensors.values())


class LinearTimer:
    """Seconds spent inside the model's linear layers (nn.Linear or QuantizedLinear, lm_head
    included), via forward hooks: the part of a step that quantization changes."""

    def __init__(self, model: torch.nn.Module) -> None:
        from radixrt.models.quant import QuantizedLinear

        self.seconds = 0.0
        self._t0 = 0.0
        for m in model.modules():
            if isinstance(m, (torch.nn.Linear, QuantizedLinear)):
                m.register_forward_pre_hook(self._pre)
                m.register_forward_hook(self._post)

    def _pre(self, *_: object) -> None:
        self._t0 = time.perf_counter()

    def _post(self, *_: object) -> None:
        self.seconds += time.perf_counter() - self._t0


@dataclass
class Case:
    name: str
    runner: ModelRunner
    load_s: float
    rss_mb: float
    weights_mb: float
    timer: LinearTimer
    pos: list[int] = field(default_factory=list)  # next position of each decoding slot
    last: list[int] = field(default_factory=list)  # last sampled token of each slot
    decode_s: list[float] = field(default_factory=list)
    linear_s: list[float] = field(default_factory=list)
    prefill_s: list[float] = field(default_factory=list)


def build(cfg: EngineConfig, name: str) -> Case:
    gc.collect()
    rss0, t0 = rss_bytes(), time.perf_counter()
    runner = ModelRunner(cfg)
    load_s = time.perf_counter() - t0
    return Case(name, runner, load_s, (rss_bytes() - rss0) / 2**20,
                weight_bytes(runner.model) / 2**20, LinearTimer(runner.model))


def step(runner: ModelRunner, batch: ForwardBatch) -> tuple[list[int], float]:
    t0 = time.perf_counter()
    out = runner.step(batch)
    return out.next_ids.tolist(), time.perf_counter() - t0


def run_in_process(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    batch = max(int(b) for b in args.batch_sizes.split(","))
    context = max(int(c) for c in args.contexts.split(","))
    ps = 16
    pages_per_slot = -(-(context + args.steps + 2) // ps)
    prefill_pages = -(-max(args.prefill_tokens, 1) // ps)
    total = (batch * pages_per_slot + prefill_pages + 1) * ps
    rng = np.random.default_rng(0)
    cases: list[Case] = []
    for dtype in args.dtypes.split(","):
        for quant in args.quantizations.split(","):
            cfg = build_engine_config(args.model, device="cpu", dtype=dtype, quantization=quant,
                                      page_size=ps, max_total_tokens=total)
            cases.append(build(cfg, f"{quant} / {dtype}"))
            print(f"[bench] built {cases[-1].name}: {cases[-1].load_s:.1f} s", flush=True)
    vocab = cases[0].runner.model_cfg.vocab_size
    prompts = [rng.integers(3, vocab, context).tolist() for _ in range(batch)]
    for case in cases:  # prefill every slot to `context` tokens (untimed)
        for slot, p in enumerate(prompts):
            pages = list(range(slot * pages_per_slot, (slot + 1) * pages_per_slot))
            ids, _ = step(case.runner, ForwardBatch.from_chunks([slot], [0], [p], {slot: pages}))
            case.pos.append(context)
            case.last.append(ids[0])
    mon = CpuMonitor(None)
    mon.start()
    for i in range(args.steps):
        for case in cases:
            b = ForwardBatch.from_chunks(list(range(batch)), case.pos, [[t] for t in case.last],
                                         step=i + 1)
            case.timer.seconds = 0.0
            ids, dt = step(case.runner, b)
            case.decode_s.append(dt)
            case.linear_s.append(case.timer.seconds)
            case.last = ids
            case.pos = [p + 1 for p in case.pos]
    if args.prefill_tokens:
        slot, base = batch, batch * pages_per_slot
        prompt = rng.integers(3, vocab, args.prefill_tokens).tolist()
        for i in range(6):
            for case in cases:
                pages = {slot: list(range(base, base + prefill_pages))} if i == 0 else None
                _, dt = step(case.runner, ForwardBatch.from_chunks([slot], [0], [prompt], pages))
                if i:  # the first is a warm-up
                    case.prefill_s.append(dt)
    cpu = mon.stop()
    rows = []
    print(f"\ntorch {torch.__version__}, {torch.get_num_threads()} threads; decode: {batch} "
          f"requests x {context}+ tokens, {args.steps} steps; prefill {args.prefill_tokens} tokens")
    print("| quantization / dtype | load (s) | weights (MiB) | RSS growth (MiB) "
          "| decode ms/step median (min) | of which linear layers | prefill ms median (min) |")
    print("|---|---|---|---|---|---|---|")
    for c in cases:
        dec = [1e3 * t for t in c.decode_s[1:]]  # step 0 warms up
        lin = statistics.median(1e3 * t for t in c.linear_s[1:])
        pre = [1e3 * t for t in c.prefill_s] or [float("nan")]
        row = {"case": c.name, "load_s": c.load_s, "weights_mib": c.weights_mb,
               "rss_mib": c.rss_mb, "decode_ms": statistics.median(dec),
               "decode_min_ms": min(dec), "decode_linear_ms": lin, "prefill_ms": statistics.median(pre),
               "prefill_min_ms": min(pre), "batch": batch, "context": context,
               "prefill_tokens": args.prefill_tokens}
        rows.append(row)
        print(f"| {c.name} | {c.load_s:.1f} | {c.weights_mb:.0f} | {c.rss_mb:.0f} | "
              f"{row['decode_ms']:.1f} ({row['decode_min_ms']:.1f}) | {lin:.1f} | "
              f"{row['prefill_ms']:.0f} ({row['prefill_min_ms']:.0f}) |", flush=True)
    share = cpu["foreign_cpu_share"]
    if share is not None:
        print(f"other processes used {share:.0%} of the CPU during the timed steps")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"threads": torch.get_num_threads(), "cpu": cpu, "rows": rows}, f, indent=1)
    return 0
