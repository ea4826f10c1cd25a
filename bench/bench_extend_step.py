"""One later-turn step of a multi-turn chat, in process: `decodes` requests decode while one
request extends its ~`context`-token conversation by `new` tokens (the step every new turn
gets), with the served defaults (dtype auto, int4 weights, cpu attention). Steps alternate
between the served path (the flat CPU loop of radixrt/models/cpu_flat.py: its median step time)
and the nn.Module path, whose hooks split a step into attention, linear layers and the rest;
--profile adds torch.profiler's top ops (module path); --linear-paths runs the module path once
per large-M kernel path of the quantized linears (radixrt.models.quant; calls of up to SMALL_M
rows stay on "auto") for an A/B.

    python -m bench.bench_extend_step --context 900 --new 81 --decodes 3 --profile
    python -m bench.bench_extend_step --linear-paths auto,blas --steps 13
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from bench.decode_step import LinearTimer, TimedAttention
from radixrt.config import build_engine_config
from radixrt.models import cpu_flat
from radixrt.models.quant import SMALL_M, set_linear_path
from radixrt.testing.batches import batch_from_chunks
from radixrt.worker.model_runner import ModelRunner


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.bench_extend_step", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="model dir (default: the embedded model)")
    ap.add_argument("--context", type=int, default=900)
    ap.add_argument("--new", type=int, default=81)
    ap.add_argument("--decodes", type=int, default=3)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--deterministic", action="store_true",
                    help="the batch-invariant kernels of --deterministic (the served path and "
                         "the attention; --linear-paths still switches the module path's)")
    ap.add_argument("--quantization", default="auto",
                    help="weights: auto (the served int4), int8, or none (float: linears on "
                         "radixrt's dense kernel up to its probed row limit, torch above)")
    ap.add_argument("--linear-paths", default="auto",
                    help="comma-separated quant_matmul paths the steps' large-M linears take in "
                         "turn (A/B)")
    a = ap.parse_args(argv)
    paths = a.linear_paths.split(",")
    n = a.decodes + 1
    cfg = build_engine_config(a.model, max_running_requests=max(8, n),
                              max_total_tokens=n * (a.context + a.new * (a.steps + 4) + 64),
                              deterministic=a.deterministic, quantization=a.quantization)
    print(f"dtype {cfg.dtype}, kv {cfg.kv_dtype}, quantization {cfg.quantization}, "
          f"{cfg.attention_backend} attention, page size {cfg.page_size}"
          + (", --deterministic" if cfg.deterministic else ""), flush=True)
    runner = ModelRunner(cfg)
    timed = TimedAttention(runner.attn)
    runner.attn = timed  # type: ignore[assignment]
    linear = LinearTimer(runner.model)
    rng = np.random.default_rng(0)
    per = (a.context + a.new * (a.steps + 4) + 64) // cfg.page_size + 1
    ids = lambda k: rng.integers(3, 40000, k).tolist()  # noqa: E731
    pos = []
    for s in range(n):  # each request's conversation so far
        runner.step(batch_from_chunks([s], [0], [ids(a.context)],
                                      {s: list(range(s * per, (s + 1) * per))}))
        pos.append(a.context)

    def step(flat: bool) -> tuple[float, float, float]:
        # Every step extends the same conversations from the same positions (their pages are
        # rewritten), so all steps measure one context length.
        chunks = [ids(a.new)] + [ids(1) for _ in range(a.decodes)]
        batch = batch_from_chunks(list(range(n)), list(pos), chunks)
        timed.seconds = linear.seconds = 0.0
        cpu_flat.enabled = flat
        runner.attn = timed.inner if flat else timed  # type: ignore[assignment]
        try:
            t0 = time.perf_counter()
            runner.step(batch)
            return time.perf_counter() - t0, timed.seconds, linear.seconds
        finally:
            cpu_flat.enabled = was_flat
            runner.attn = timed  # type: ignore[assignment]

    was_flat = cpu_flat.enabled
    variants = ["served"] + paths
    with torch.inference_mode():
        res: dict[str, list[tuple[float, float, float]]] = {v: [] for v in variants}
        for i in range(a.steps * len(variants) + len(variants)):  # first round: warm-up
            v = variants[i % len(variants)]
            set_linear_path("auto" if v == "served" else v, min_rows=SMALL_M)
            r = step(v == "served")
            if i >= len(variants):
                res[v].append(r)
        set_linear_path("auto")
        head = f"extend {a.new} over {a.context} + {a.decodes} decodes"
        for v, rs in res.items():
            med = [statistics.median(r[i] for r in rs) * 1e3 for i in range(3)]
            if v == "served":
                print(f"{head}, served (flat loop): median {med[0]:.1f} ms ({len(rs)} steps)")
                continue
            print(f"{head}, module path, linear path {v}: median {med[0]:.1f} ms, attention "
                  f"{med[1]:.1f} ms, linear layers {med[2]:.1f} ms, the rest "
                  f"{med[0] - med[1] - med[2]:.1f} ms ({len(rs)} steps)")
        if a.profile:
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for _ in range(3):
                    step(False)
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
