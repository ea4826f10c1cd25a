"""Micro-benchmark of one linear layer: fp32 / bf16 torch vs our int8 / int4 packed weights.

    python -m bench.bench_quant_linear                       # the default model's shapes
    python -m bench.bench_quant_linear --rows 1,4,64 --out quant.json

For every (shape, rows): torch F.linear in fp32 and bf16, and radixrt.models.quant's
quant_matmul for int8 and int4 weights: "auto" (what QuantizedLinear runs), the packed-weight
kernel with fp32 activations ("f32"), with int8 activations ("i8", AVX2 only), the blocked
large-M GEMM ("blocked", AVX2 only), the batch-invariant kernel of --deterministic
("invariant") and dequantize + BLAS ("blas"). Rounds interleave every
variant (so a busy neighbour slows all alike); the table shows medians in µs and, for the
packed kernels, weight bytes streamed per second (GB/s). The share of the machine's CPU that
other processes used during the run is printed too: above a few percent, the numbers are
contended.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable

import torch
from torch.nn import functional as F

from bench.cpu import CpuMonitor
from radixrt.models.quant import native_available, quant_matmul, quantize_rtn

# The default model's projections (out, in): qkv, o, gate_up, down, lm_head.
SHAPES = {"qkv": (960, 576), "o": (576, 576), "gate_up": (3072, 576), "down": (576, 1536),
          "lm_head": (49152, 576)}


def variants(n: int, k: int, rows: int, i8: bool) -> dict[str, tuple[Callable[[], object], int]]:
    """name -> (call, weight bytes it reads)."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(n, k, generator=g) * 0.05
    x = torch.randn(rows, k, generator=g)
    wb, xb = w.bfloat16(), x.bfloat16()
    out: dict[str, tuple[Callable[[], object], int]] = {
        "fp32": (lambda: F.linear(x, w), w.numel() * 4),
        "bf16": (lambda: F.linear(xb, wb), w.numel() * 2),
    }
    for bits in (8, 4):
        q = quantize_rtn(w, bits)
        paths = ("auto", "f32", "i8", "blocked", "invariant", "blas") if i8 else (
            "auto", "f32", "invariant", "blas")
        for path in paths:
            out[f"int{bits}-{path}"] = (lambda q=q, path=path: quant_matmul(x, q, path), q.nbytes())
    return out


def measure(shape: str, rows: int, rounds: int, i8: bool) -> dict[str, float]:
    n, k = SHAPES[shape]
    calls = variants(n, k, rows, i8)
    with torch.inference_mode():
        for call, _ in calls.values():  # warm-up
            call()
        times: dict[str, list[float]] = {name: [] for name in calls}
        for _ in range(rounds):
            for name, (call, _) in calls.items():
                t0 = time.perf_counter()
                call()
                times[name].append(time.perf_counter() - t0)
    row: dict[str, float] = {}
    for name, (_, nbytes) in calls.items():
        us = statistics.median(times[name]) * 1e6
        row[f"{name}_us"] = us
        row[f"{name}_min_us"] = min(times[name]) * 1e6
        row[f"{name}_gbs"] = nbytes / us / 1e3
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.bench_quant_linear", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default=",".join(SHAPES), help=f"of {', '.join(SHAPES)}")
    ap.add_argument("--rows", default="1,4,8,16,64,512", help="activation rows (tokens)")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    ap.add_argument("--out", help="write the rows as JSON here")
    args = ap.parse_args(argv)
    if not native_available():
        print("radixrt._quant_cpu is not built", file=sys.stderr)
        return 1
    if args.threads:
        torch.set_num_threads(args.threads)
    from radixrt.models.quant import _ext

    i8 = bool(_ext().has_avx2())
    cols = ["fp32", "bf16", "int8-auto", "int4-auto", "int4-f32"] \
        + (["int4-i8", "int4-blocked"] if i8 else []) \
        + ["int4-invariant", "int4-blas", "int8-f32", "int8-blas"]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; µs (GB/s of weights)")
    print("| shape | rows | " + " | ".join(cols) + " |")
    print("|---|---|" + "---|" * len(cols))
    mon = CpuMonitor(None)
    mon.start()
    results = []
    for shape in args.shapes.split(","):
        for rows in (int(r) for r in args.rows.split(",")):
            if shape == "lm_head" and rows > 64:
                continue  # lm_head only ever sees the sampled rows
            row = {"shape": shape, "out_in": SHAPES[shape], "rows": rows,
                   **measure(shape, rows, args.rounds, i8)}
            results.append(row)
            cells = [f"{row[c + '_us']:.0f} ({row[c + '_gbs']:.1f})" for c in cols]
            print(f"| {shape} {SHAPES[shape][0]}x{SHAPES[shape][1]} | {rows} | "
                  + " | ".join(cells) + " |", flush=True)
    cpu = mon.stop()
    share = cpu["foreign_cpu_share"]
    print(f"other processes used {share:.0%} of the CPU during the run" if share is not None
          else "CPU share of other processes unknown")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"threads": torch.get_num_threads(), "cpu": cpu, "rows": results}, f,
                      indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
