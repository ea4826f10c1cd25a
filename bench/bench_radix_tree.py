"""Micro-benchmark of RadixCache.match_prefix / insert: native core vs numpy reference.

    python -m bench.bench_radix_tree                    # markdown table on stdout
    python -m bench.bench_radix_tree --out radix.json   # also write the raw numbers

Shapes (all on keys of --tokens tokens, 32k by default):
  long_key       one key in the tree; match it, re-insert it (all cached), insert it anew
  shared_prefix  --keys keys sharing all but their last 1/16; match them, insert new siblings
  chat           one conversation grown turn by turn (a chain of nodes); match the whole
                 conversation, insert the next turn
plus the bare common-prefix scan of two equal 32k arrays.
Progress goes to stderr; times are medians of single calls.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np

from radixrt.cache.base import CacheKey
from radixrt.cache.radix_cache import NATIVE_AVAILABLE, RadixCache, common_prefix_len_ref


def _timed(
    fn: Callable[[], object], repeats: int, setup: Callable[[], None] | None = None
) -> float:
    """Median seconds of fn() over repeats calls (setup, if any, runs untimed before each)."""
    times = []
    for _ in range(repeats):
        if setup is not None:
            setup()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


class _Pages:
    """Hands out fresh page ids (the benchmark never runs out; no allocator needed)."""

    def __init__(self) -> None:
        self.next = 0

    def take(self, n: int) -> np.ndarray:
        out = np.arange(self.next, self.next + n, dtype=np.int32)
        self.next += n
        return out


def bench_long_key(native: bool, ps: int, n: int, repeats: int, rng) -> dict[str, float]:
    toks = rng.integers(0, 32000, n, dtype=np.int32)
    key = CacheKey(toks)
    pg = _Pages()
    cache = RadixCache(ps, use_native=native)
    pages = pg.take(n // ps)
    cache.insert(key, pages)
    out = {
        "match": _timed(lambda: cache.match_prefix(key), repeats),
        "insert_cached": _timed(lambda: cache.insert(key, pages), repeats),
    }
    fresh: list[RadixCache] = []
    out["insert_new"] = _timed(
        lambda: fresh[-1].insert(key, pages),
        repeats,
        setup=lambda: fresh.append(RadixCache(ps, use_native=native)),
    )
    return out


def bench_shared_prefix(
    native: bool, ps: int, n: int, n_keys: int, repeats: int, rng
) -> dict[str, float]:
    shared = n - n // 16
    prefix = rng.integers(0, 32000, shared, dtype=np.int32)
    pg = _Pages()
    cache = RadixCache(ps, use_native=native)

    def new_key() -> CacheKey:
        return CacheKey(
            np.concatenate([prefix, rng.integers(0, 32000, n - shared, dtype=np.int32)])
        )

    keys = [new_key() for _ in range(n_keys)]
    for k in keys:
        cache.insert(k, pg.take(n // ps))
    it = iter(range(10**9))
    out = {"match": _timed(lambda: cache.match_prefix(keys[next(it) % n_keys]), repeats)}
    pending: list[CacheKey] = []
    out["insert_new"] = _timed(
        lambda: cache.insert(pending[-1], pg.take(n // ps)),
        repeats,
        setup=lambda: pending.append(new_key()),
    )
    return out


def bench_chat(native: bool, ps: int, n: int, turn: int, repeats: int, rng) -> dict[str, float]:
    conv = rng.integers(0, 32000, n + turn, dtype=np.int32)
    pg = _Pages()
    cache = RadixCache(ps, use_native=native)
    all_pages = pg.take((n + turn) // ps)
    for end in range(turn, n + 1, turn):  # one insert per turn: a chain of n / turn nodes
        cache.insert(CacheKey(conv[:end]), all_pages[: end // ps])
    key = CacheKey(conv[:n])
    nxt = CacheKey(conv[: n + turn])
    nxt_pages = all_pages[: (n + turn) // ps]
    out = {"match": _timed(lambda: cache.match_prefix(key), repeats)}
    # The new turn's leaf is the chain's only leaf, so evict(1) (untimed) undoes each insert.
    out["insert_new"] = _timed(
        lambda: cache.insert(nxt, nxt_pages), repeats, setup=lambda: cache.evict(1)
    )
    return out


def bench_scan(native: bool, n: int, repeats: int, rng) -> dict[str, float]:
    a = rng.integers(0, 32000, n, dtype=np.int32)
    b = a.copy()
    if native:
        from radixrt import _radix_core

        fn = _radix_core.common_prefix_len
    else:
        fn = common_prefix_len_ref
    return {"common_prefix_len": _timed(lambda: fn(a, b, 1), repeats)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--tokens", type=int, default=32768, help="key length (default 32768)")
    ap.add_argument("--page-sizes", default="1,16", help="comma list (default 1,16)")
    ap.add_argument("--repeats", type=int, default=200, help="timed calls per number")
    ap.add_argument("--keys", type=int, default=64, help="keys in shared_prefix")
    ap.add_argument("--turn", type=int, default=512, help="tokens per chat turn")
    ap.add_argument("--out", help="write results as JSON here")
    args = ap.parse_args(argv)

    impls = [False, True] if NATIVE_AVAILABLE else [False]
    if not NATIVE_AVAILABLE:
        print("radixrt._radix_core not built: reference path only", file=sys.stderr)
    page_sizes = [int(x) for x in args.page_sizes.split(",")]
    n, reps = args.tokens, args.repeats

    cases: list[tuple[str, int, Callable[[bool, np.random.Generator], dict[str, float]]]] = []
    for ps in page_sizes:
        cases += [
            ("long_key", ps, lambda nat, rng, ps=ps: bench_long_key(nat, ps, n, reps, rng)),
            (
                "shared_prefix",
                ps,
                lambda nat, rng, ps=ps: bench_shared_prefix(nat, ps, n, args.keys, reps, rng),
            ),
            ("chat", ps, lambda nat, rng, ps=ps: bench_chat(nat, ps, n, args.turn, reps, rng)),
        ]
    cases.append(("scan", 1, lambda nat, rng: bench_scan(nat, n, reps * 5, rng)))

    rows: list[dict[str, object]] = []
    total = len(cases) * len(impls)
    step = 0
    for shape, ps, fn in cases:
        res: dict[bool, dict[str, float]] = {}
        for nat in impls:
            step += 1
            t0 = time.perf_counter()
            print(
                f"[{step}/{total}] {shape} page_size={ps} {'native' if nat else 'ref'} ...",
                end="",
                file=sys.stderr,
                flush=True,
            )
            res[nat] = fn(nat, np.random.default_rng(0))
            print(f" {time.perf_counter() - t0:.1f}s", file=sys.stderr, flush=True)
        for op in res[False]:
            row: dict[str, object] = {
                "shape": shape,
                "page_size": ps,
                "op": op,
                "tokens": n,
                "ref_us": res[False][op] * 1e6,
            }
            if True in res:
                row["native_us"] = res[True][op] * 1e6
                row["speedup"] = res[False][op] / res[True][op]
            rows.append(row)

    print(f"\nRadixCache, {n}-token keys, median of {reps} calls (scan: {reps * 5})\n")
    print("| shape | page_size | op | reference (µs) | native (µs) | ref / native |")
    print("|---|---:|---|---:|---:|---:|")
    for r in rows:
        nat = f"{r['native_us']:.1f}" if "native_us" in r else "n/a"
        sp = f"{r['speedup']:.2f}x" if "speedup" in r else "n/a"
        print(f"| {r['shape']} | {r['page_size']} | {r['op']} | {r['ref_us']:.1f} | {nat} | {sp} |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(
                {"tokens": n, "repeats": reps, "native": NATIVE_AVAILABLE, "rows": rows},
                f,
                indent=1,
            )
        print(f"\nwrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
