"""Prefill time per case, in process: each round prefills one fresh random prompt of `tokens`
tokens (one chunk, a new request) in every case, the cases alternating round by round so
that a busy neighbour slows each alike; medians over rounds, and each case against the first.

A case is backend:dtype:kv_dtype:quantization, the quantization with bench_decode's
suffixes (+torch: float linears on torch's BLAS only; +wide: a 16-bit checkpoint's matrices
widened to float32 at load; +det: --deterministic's kernels).

    python -m bench.bench_prefill --model DIR --tokens 512 --rounds 4 \\
        --case cpu:float32:auto:none+wide --case cpu:float32:auto:none
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from bench.decode_step import make_runner, weight_mib
from radixrt.testing.batches import batch_from_chunks


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.bench_prefill", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="model dir (default: radixrt's)")
    ap.add_argument("--case", action="append", required=True,
                    help="backend:dtype:kv_dtype:quantization (repeat)")
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=4)
    args = ap.parse_args(argv)
    cases = [tuple(c.split(":")) for c in args.case]
    if any(len(c) != 4 for c in cases):
        raise SystemExit("a case is backend:dtype:kv_dtype:quantization")
    runners = []
    for backend, dtype, kv, quant in cases:
        runner, _, load_s = make_runner(args.model, backend, dtype, kv, quant, "auto", 2,
                                        args.tokens, 8)
        runner.attn = runner.attn.inner  # untimed: what the server runs
        runners.append(runner)
        print(f"loaded {backend}:{dtype}:{kv}:{quant} in {load_s:.1f} s, "
              f"{weight_mib(runner.model):.1f} MiB of weights", flush=True)
    rng = np.random.default_rng(0)
    times: list[list[float]] = [[] for _ in cases]
    for r in range(args.rounds):
        for i, runner in enumerate(runners):
            slot = r % 2  # a new request each round, in a slot whose pages are free again
            per = -(-args.tokens // runner.page_size) + 1
            ids = rng.integers(3, runner.model_cfg.vocab_size, args.tokens).tolist()
            fb = batch_from_chunks([slot], [0], [ids], {slot: list(range(slot * per,
                                                                         (slot + 1) * per))})
            t0 = time.perf_counter()
            with torch.inference_mode():
                runner.step(fb)
            times[i].append(time.perf_counter() - t0)
        print(f"round {r + 1}/{args.rounds}: "
              + ", ".join(f"{t[-1] * 1e3:.0f} ms" for t in times), flush=True)
    print(f"\ntorch threads {torch.get_num_threads()}; {args.tokens} tokens, one chunk; "
          f"median of {args.rounds} rounds, cases alternating")
    print("| Case | ms | tokens/s | vs first |")
    print("|---|---|---|---|")
    base = statistics.median(times[0])
    for case, t in zip(args.case, times):
        med = statistics.median(t)
        print(f"| {case} | {med * 1e3:.0f} | {args.tokens / med:.0f} | {med / base:.3f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
