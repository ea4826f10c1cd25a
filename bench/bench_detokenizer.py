"""Micro-benchmark: radixrt's incremental detokenizer vs decoding the whole output each step.

Streams every output one token at a time (as the tokenizer process sees them, one step at a
time) and reports tokens/s per method and output length. The naive method re-decodes all ids
so far and emits the new suffix: O(n) per token, O(n^2) per request. Both must produce the
same text; the run fails if they do not.

    python -m bench.bench_detokenizer [--lengths 32,256,2048] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from typing import Any

from radixrt.tokenizer.detokenize import IncrementalDetokenizer

# Multi-byte characters (accents, CJK, emoji) split across byte-level BPE tokens: the case an
# incremental detokenizer has to hold back.
EXTRA = ("café", "naïve", "日本語", "über", "🙂", "👍🏽", "Ωmega", "ﬁne", "—", "…")


def sample_ids(tokenizer: Any, n: int, seed: int = 0) -> list[int]:
    """n token ids of English-like text with some non-ASCII words mixed in."""
    from bench.workloads import WORDS

    rng = random.Random(seed)
    ids: list[int] = []
    while len(ids) < n:
        words = [rng.choice(EXTRA) if rng.random() < 0.08 else rng.choice(WORDS)
                 for _ in range(200)]
        ids += tokenizer(" ".join(words) + "\n", add_special_tokens=False)["input_ids"]
    return ids[:n]


def naive(tokenizer: Any, ids: list[int]) -> str:
    """What one writes first: decode everything each step, emit what is new."""
    out, prev = [], ""
    for k in range(1, len(ids) + 1):
        text = tokenizer.decode(ids[:k], skip_special_tokens=True)
        if text.endswith("\ufffd"):
            continue  # half a character: wait for the next token
        out.append(text[len(prev):])
        prev = text
    # At the end, a held-back partial character goes out as U+FFFD, as a full decode has it.
    out.append(tokenizer.decode(ids, skip_special_tokens=True)[len(prev):])
    return "".join(out)


def incremental(tokenizer: Any, ids: list[int]) -> str:
    d = IncrementalDetokenizer(tokenizer, skip_special_tokens=True)
    out = [d.add([t]) for t in ids]
    out.append(d.flush())
    return "".join(out)


def bench(fn: Any, tokenizer: Any, ids: list[int], min_time: float) -> tuple[float, str]:
    """Best tokens/s over repeats lasting at least min_time seconds in all."""
    best, total, text = 0.0, 0.0, ""
    while total < min_time or best == 0.0:
        t0 = time.perf_counter()
        text = fn(tokenizer, ids)
        dt = time.perf_counter() - t0
        total += dt
        best = max(best, len(ids) / dt)
    return best, text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.bench_detokenizer", description=__doc__)
    ap.add_argument("--model", default=None, help="tokenizer dir (default: radixrt's default model)")
    ap.add_argument("--lengths", default="32,256,1024,4096")
    ap.add_argument("--min-time", type=float, default=0.5, help="seconds per measurement")
    ap.add_argument("--naive-max", type=int, default=4096,
                    help="skip the quadratic naive method above this length")
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args(argv)

    from transformers import AutoTokenizer

    model = args.model
    if model is None:
        from radixrt.default_model import default_model_dir

        model = str(default_model_dir())
    tok = AutoTokenizer.from_pretrained(model)
    rows: list[dict[str, Any]] = []
    print("| Output tokens | incremental (tok/s) | naive full decode (tok/s) | speed-up |")
    print("|---|---|---|---|")
    for n in (int(x) for x in args.lengths.split(",")):
        ids = sample_ids(tok, n)
        inc, inc_text = bench(incremental, tok, ids, args.min_time)
        row: dict[str, Any] = {"tokens": n, "incremental_tok_s": inc, "naive_tok_s": None}
        if n <= args.naive_max:
            nv, nv_text = bench(naive, tok, ids, args.min_time)
            row["naive_tok_s"] = nv
            if inc_text != nv_text or inc_text != tok.decode(ids, skip_special_tokens=True):
                print(f"MISMATCH at {n} tokens: the incremental text differs from a full decode",
                      file=sys.stderr)
                return 1
        rows.append(row)
        nv = row["naive_tok_s"]
        print(f"| {n} | {inc:,.0f} | {'–' if nv is None else f'{nv:,.0f}'} "
              f"| {'–' if nv is None else f'{inc / nv:.1f}x'} |", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": model, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
