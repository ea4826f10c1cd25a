"""In-process A/B of two builds of radixrt._quant_cpu: this tree's and another's (e.g. a
`git worktree` of an older commit, built with `python setup.py build_ext --inplace`).

On a shared VM the same binary's timings move 10-25 % between processes, more than most
kernel changes; calls of the two builds alternated in one process see the same machine.

    git worktree add /tmp/prev HEAD~1 && (cd /tmp/prev && python setup.py build_ext --inplace)
    python -m bench.ab_quant_kernels /tmp/prev --rows 1,4 --threads 2

Prints, per shape and row count, the median µs of each build's kernel (`--path`: 0 the
default small-M route, 4 the blocked GEMM) and whether their outputs are bitwise equal.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from types import ModuleType

import torch

from bench.bench_quant_linear import SHAPES
from bench.native_builds import built_extension, load_extension
from radixrt.models.quant import quantize_rtn


def load_build(tree: Path) -> ModuleType:
    """The other tree's _quant_cpu, under its own module name."""
    return load_extension(built_extension(tree, "_quant_cpu"), "_quant_cpu")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.ab_quant_kernels", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("other", type=Path, help="the other tree (its built extension)")
    ap.add_argument("--shapes", default="qkv,o,gate_up,down")
    ap.add_argument("--rows", default="1,4")
    ap.add_argument("--bits", type=int, choices=(4, 8), default=4)
    ap.add_argument("--path", type=int, default=0, help="kernel path code (0 auto, 4 blocked)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--rounds", type=int, default=40)
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    from radixrt import _quant_cpu as this

    builds = {"other": load_build(a.other), "this": this}
    threads = torch.get_num_threads()
    print(f"int{a.bits}, path {a.path}, {threads} threads; median µs of {a.rounds} rounds "
          f"(10 calls each), the builds alternated")
    print("| shape | rows | other tree | this tree | this / other | outputs equal |")
    print("|---|---|---|---|---|---|")
    for name in a.shapes.split(","):
        n, k = SHAPES[name]
        g = torch.Generator().manual_seed(0)
        q = quantize_rtn(torch.randn(n, k, generator=g) * 0.05, a.bits)
        for rows in (int(r) for r in a.rows.split(",")):
            x = torch.randn(rows, k, generator=g)
            ys = {b: torch.empty(rows, n) for b in builds}
            times: dict[str, list[float]] = {b: [] for b in builds}
            for i in range(a.rounds + 1):  # round 0 warms up
                for b, ext in builds.items():
                    y = ys[b]
                    t0 = time.perf_counter()
                    for _ in range(10):
                        if a.bits == 4:
                            ext.gemm_q4(x.data_ptr(), rows, k, q.qs.data_ptr(), q.d.data_ptr(),
                                        q.m.data_ptr(), n, y.data_ptr(), threads, a.path)
                        else:
                            ext.gemm_q8(x.data_ptr(), rows, k, q.qs.data_ptr(), q.d.data_ptr(),
                                        n, y.data_ptr(), threads, a.path)
                    if i:
                        times[b].append((time.perf_counter() - t0) / 10)
            other, mine = (statistics.median(times[b]) * 1e6 for b in ("other", "this"))
            print(f"| {name} {n}x{k} | {rows} | {other:.0f} | {mine:.0f} | {mine / other:.2f} | "
                  f"{torch.equal(ys['other'], ys['this'])} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
