"""Micro-benchmark: one step's attention on CPU, torch backend vs cpu backend (medians).

A step is plan() plus one forward() per layer (the new k/v written into the pool, then
attention), on the default model's attention shape (9 query heads, 3 KV heads, head dim 64,
30 layers, page size 16) unless told otherwise. Each layer has its own KV pool memory, as in a
real step: a benchmark that re-reads one layer's pages would time the L3 cache, not DRAM
(with many layers the pool is capped near --pool-gib and layers share it round-robin).

    python -m bench.bench_attention_cpu [--decode 1x512,4x900,16x4096] [--extend 512+0,512+1024]
        [--types float32:float32,float32:bfloat16,bfloat16:bfloat16] [--json out.json]

Types are model dtype:KV-cache dtype. Decode cases are BATCHxCONTEXT; extend cases are
CHUNK+CACHED_PREFIX (one request). A backend named `NAME:head` runs on a head-major pool
(what the server uses for the cpu backend), `NAME:token` on a token-major one;
`NAME:LAYOUT:PAGES` gives that backend its own page order (so orders compare in one run); `--pages
contiguous` gives each request consecutive pages (a fresh server), `interleaved` hands them out
one per request in turn (what decode growth does), `random` scatters them (a long-running one).

`--other-tree DIR` compiles DIR's kernels (e.g. a `git worktree` of an older commit) into this
process as the backend `other`, so a kernel change is timed against its baseline rep by rep:

    git worktree add /tmp/prev HEAD~1
    python -m bench.bench_attention_cpu --other-tree /tmp/prev --backends other:head,cpu:head
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

from bench.native_builds import build_attention, load_extension
from radixrt.attention.base import AttentionBackend, AttentionMetadata, build_metadata
from radixrt.attention.cpu_backend import CpuAttentionBackend
from radixrt.attention.torch_backend import TorchAttentionBackend
from radixrt.kvcache.pool import KVPool, KVPoolShape


def make_backend(name: str, pool: KVPool, heads: int, dim: int, dtype: torch.dtype,
                 cascade: bool = True, other: ModuleType | None = None) -> AttentionBackend:
    """torch, cpu, or other (the cpu backend on `other`, another tree's kernels)."""
    if name == "torch":
        return TorchAttentionBackend(pool, heads, dim)
    if name == "other" and other is None:
        raise SystemExit("the backend `other` needs --other-tree")
    return CpuAttentionBackend(pool, heads, dim, dtype,
                               **({} if cascade else {"cascade_min_pages": 0}),
                               native=other if name == "other" else None)


def batch_meta(starts: list[int], num_new: list[int], ps: int, num_pages: int, seed: int = 0,
               shared_pages: int = 0, pages: str = "random") -> AttentionMetadata:
    """Distinct pages per request, except `shared_pages` leading pages all share: `random`
    (scattered over the pool), `contiguous` (each request's consecutive) or `interleaved`
    (handed out one page per request in turn, as decode growth does)."""
    rng = np.random.default_rng(seed)
    need = [-(-(s + n) // ps) for s, n in zip(starts, num_new)]
    own = [n - shared_pages for n in need]
    if sum(own) + shared_pages > num_pages:
        raise ValueError("pool too small for this case")
    perm = rng.permutation(num_pages) if pages == "random" else np.arange(num_pages)
    shared, pos = perm[:shared_pages], shared_pages
    rows = np.zeros((len(need), max(need)), np.int32)
    if pages == "interleaved":
        for j in range(max(own)):
            for i in range(len(need)):
                if j < own[i]:
                    rows[i, shared_pages + j] = perm[pos]
                    pos += 1
        rows[:, :shared_pages] = shared
    else:
        for i, n in enumerate(need):
            rows[i, :n] = np.concatenate([shared, perm[pos : pos + own[i]]])
            pos += own[i]
    return build_metadata(np.array(starts), np.array(num_new), rows, ps)[0]


def time_steps(backends: dict[str, AttentionBackend], metas: dict[str, AttentionMetadata],
               layers: int, pool_layers: int, heads: int, kv_heads: int, dim: int,
               dtype: torch.dtype, reps: int) -> dict[str, list[float]]:
    """Seconds of plan() + `layers` forward() calls, the backends (each with its batch's pages)
    interleaved rep by rep (a busy neighbour then slows each alike); the first rep warms caches
    and is dropped."""
    t = int(next(iter(metas.values())).cu_new[-1])
    g = torch.Generator().manual_seed(1)
    q = torch.randn(t, heads, dim, generator=g).to(dtype)
    k = torch.randn(t, kv_heads, dim, generator=g).to(dtype)
    v = torch.randn(t, kv_heads, dim, generator=g).to(dtype)
    times: dict[str, list[float]] = {name: [] for name in backends}
    for i in range(reps + 1):
        for name, backend in backends.items():
            t0 = time.perf_counter()
            backend.plan(metas[name])
            for layer in range(layers):
                backend.forward(q, k, v, layer % pool_layers)
            if i:
                times[name].append(time.perf_counter() - t0)
    return times


PAGE_ORDERS = ("random", "contiguous", "interleaved")


def backend_spec(name: str, pages: str) -> tuple[str, str, str]:
    """NAME[:LAYOUT[:PAGES]] -> (kernels, KV layout, page order); `pages` is the default."""
    kernel, layout, order = (name.split(":") + ["", ""])[:3]
    layout, order = layout or "token", order or pages
    if layout not in ("token", "head") or order not in PAGE_ORDERS:
        raise SystemExit(f"--backends {name}: want NAME[:token|head[:{'|'.join(PAGE_ORDERS)}]]")
    return kernel, layout, order


def parse_cases(text: str, sep: str) -> list[tuple[int, int]]:
    return [tuple(int(x) for x in c.split(sep)) for c in text.split(",") if c]  # type: ignore[misc]


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    heads, kv_heads, dim, ps = args.heads, args.kv_heads, args.head_dim, args.page_size
    decode = parse_cases(args.decode, "x")
    extend = parse_cases(args.extend, "+")
    # Each request rounds up to whole pages of its own.
    pages = max([b * -(-(c + 1) // ps) for b, c in decode]
                + [-(-(n + p) // ps) for n, p in extend] + [1]) + 8
    rows: list[dict[str, Any]] = []
    other = (load_extension(build_attention(args.other_tree), "_attention_cpu")
             if args.other_tree else None)
    for types in args.types.split(","):
        dtype, kv_dtype = (getattr(torch, x) for x in types.split(":"))
        per_layer = KVPoolShape(1, pages, ps, kv_heads, dim).bytes_per_page(kv_dtype) * pages
        pool_layers = max(1, min(args.layers, int(args.pool_gib * 2**30 // per_layer)))
        names = args.backends.split(",")
        specs = {n: backend_spec(n, args.pages) for n in names}
        pools = {}
        for layout in {layout for _, layout, _ in specs.values()}:
            pools[layout] = KVPool(KVPoolShape(pool_layers, pages, ps, kv_heads, dim), kv_dtype,
                                   "cpu", head_major=layout == "head")
            for kc, vc in zip(pools[layout].k_cache, pools[layout].v_cache):
                kc.normal_()
                vc.normal_()
        cases = [("decode", f"{b}x{c}", [c - 1] * b, [1] * b) for b, c in decode]
        cases += [("extend", f"{n}+{p}", [p], [n]) for n, p in extend]
        for kind, label, starts, num_new in cases:
            metas = {n: batch_meta(starts, num_new, ps, pages, seed=len(rows), pages=order)
                     for n, (_, _, order) in specs.items()}
            res: dict[str, Any] = {"kind": kind, "case": label, "dtype": str(dtype)[6:],
                                   "kv_dtype": str(kv_dtype)[6:], "layers": args.layers,
                                   "pool_layers": pool_layers, "pages": args.pages}
            backends = {n: make_backend(kernel, pools[layout], heads, dim, dtype, other=other)
                        for n, (kernel, layout, _) in specs.items()}
            times = time_steps(backends, metas, args.layers, pool_layers, heads, kv_heads, dim,
                               dtype, args.reps)
            for name in names:
                res[f"{name}_ms"] = 1000 * statistics.median(times[name])
                res[f"{name}_min_ms"] = 1000 * min(times[name])
            if len(names) > 1:
                res["speedup"] = res[f"{names[0]}_ms"] / res[f"{names[-1]}_ms"]
            rows.append(res)
            print(f"| {kind} | {label} | {res['dtype']} | {res['kv_dtype']} | "
                  + " | ".join(f"{res.get(f'{n}_ms', float('nan')):.2f}"
                               for n in args.backends.split(","))
                  + f" | {res.get('speedup', float('nan')):.1f}x |", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.bench_attention_cpu", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--decode", default="1x512,4x512,16x512,1x900,4x900,16x900,1x4096,4x4096,"
                                        "16x4096", help="BATCHxCONTEXT decode cases")
    ap.add_argument("--extend", default="128+0,512+0,1024+0,128+2048,512+1024,512+4096",
                    help="CHUNK+PREFIX extend cases (one request)")
    ap.add_argument("--types", default="float32:float32,float32:bfloat16,bfloat16:bfloat16",
                    help="model dtype:KV dtype pairs")
    ap.add_argument("--backends", default="torch,cpu")
    ap.add_argument("--layers", type=int, default=30)
    ap.add_argument("--heads", type=int, default=9)
    ap.add_argument("--kv-heads", type=int, default=3)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--page-size", type=int, default=16)
    ap.add_argument("--pool-gib", type=float, default=1.5,
                    help="cap on the benchmark's KV pool (layers share it beyond)")
    ap.add_argument("--pages", choices=PAGE_ORDERS, default="random",
                    help="each request's pages scattered over the pool, consecutive, or "
                         "handed out one per request in turn (decode growth)")
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    ap.add_argument("--other-tree", type=Path, default=None,
                    help="another checkout whose kernels run as the backend `other`")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"threads {torch.get_num_threads()}; ms per step ({args.layers} layers: plan + "
          f"write k/v + attention), median of {args.reps}, backends interleaved")
    print("| Kind | Case | dtype | KV | " + " | ".join(f"{b} ms" for b in
                                                       args.backends.split(",")) + " | first / last |")
    print("|---|---|---|---|" + "---|" * (len(args.backends.split(",")) + 1))
    rows = run(args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
