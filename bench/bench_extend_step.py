"""One later-turn step of a multi-turn chat, in process: `decodes` requests decode while one
request extends its ~`context`-token conversation by `new` tokens (the step every new turn
gets), with the served defaults (dtype auto, int4 weights, cpu attention). Prints the median
step time and the attention part; --profile adds torch.profiler's top ops; --linear-paths
interleaves the steps over the quantized linears' large-M kernel paths (radixrt.models.quant;
calls of up to SMALL_M rows stay on "auto") for an A/B.

    python -m bench.bench_extend_step --context 900 --new 81 --decodes 3 --profile
    python -m bench.bench_extend_step --linear-paths auto,blas --steps 13
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from bench.decode_step import TimedAttention
from radixrt.config import build_engine_config
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
    ap.add_argument("--linear-paths", default="auto",
                    help="comma-separated quant_matmul paths the steps' large-M linears take in "
                         "turn (A/B)")
    a = ap.parse_args(argv)
    paths = a.linear_paths.split(",")
    n = a.decodes + 1
    cfg = build_engine_config(a.model, max_running_requests=max(8, n),
                              max_total_tokens=n * (a.context + a.new * (a.steps + 4) + 64))
    print(f"dtype {cfg.dtype}, kv {cfg.kv_dtype}, quantization {cfg.quantization}, "
          f"{cfg.attention_backend} attention, page size {cfg.page_size}", flush=True)
    runner = ModelRunner(cfg)
    timed = TimedAttention(runner.attn)
    runner.attn = timed  # type: ignore[assignment]
    rng = np.random.default_rng(0)
    per = (a.context + a.new * (a.steps + 4) + 64) // cfg.page_size + 1
    ids = lambda k: rng.integers(3, 40000, k).tolist()  # noqa: E731
    pos = []
    for s in range(n):  # each request's conversation so far
        runner.step(batch_from_chunks([s], [0], [ids(a.context)],
                                      {s: list(range(s * per, (s + 1) * per))}))
        pos.append(a.context)

    def step() -> tuple[float, float]:
        chunks = [ids(a.new)] + [ids(1) for _ in range(a.decodes)]
        batch = batch_from_chunks(list(range(n)), list(pos), chunks)
        for s, c in enumerate(chunks):
            pos[s] += len(c)
        timed.seconds = 0.0
        t0 = time.perf_counter()
        runner.step(batch)
        return time.perf_counter() - t0, timed.seconds

    with torch.inference_mode():
        res: dict[str, list[tuple[float, float]]] = {p: [] for p in paths}
        for i in range(a.steps + len(paths)):  # the first step of each path is a warm-up
            path = paths[i % len(paths)]
            set_linear_path(path, min_rows=SMALL_M)
            r = step()
            if i >= len(paths):
                res[path].append(r)
        set_linear_path("auto")
        for path, rs in res.items():
            print(f"extend {a.new} over ~{a.context} + {a.decodes} decodes, linear path {path}: "
                  f"median {statistics.median(r[0] for r in rs) * 1e3:.1f} ms, attention "
                  f"{statistics.median(r[1] for r in rs) * 1e3:.1f} ms ({len(rs)} steps)")
        if a.profile:
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for _ in range(3):
                    step()
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
