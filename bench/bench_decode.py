"""Probe: decode time per step, by context length and batch size.

Against any running server (--base-url): sends `batch` streaming completions with prompts of
`context` tokens at once and times the steps after every request has its first token (so only
decodes run). Also times the prefill of one prompt per context length (max_tokens 1).

In process (--in-process): drives a ModelRunner directly (no server, no sockets): prefills
`batch` random prompts of `context` tokens, then times decode steps (ModelRunner.step:
forward + sampling), for each attention backend x model dtype x KV-cache dtype x quantization
asked for, and with --profile prints torch.profiler's top ops of a few steps, attention
labelled as `attention` (the cpu backend's kernels are not torch ops).

    python -m bench.bench_decode --base-url http://127.0.0.1:30000 [--contexts 16,1024,2048]
    python -m bench.bench_decode --in-process --contexts 900 --batch-sizes 4 \
        --backends torch,cpu --dtypes float32,bfloat16 --kv-dtypes auto,bfloat16 --profile
    python -m bench.bench_decode --in-process --contexts 900 --batch-sizes 4 \
        --backends cpu --quantizations none,int8,int4
    python -m bench.bench_decode --in-process --contexts 900 --batch-sizes 4 --profile \
        --case torch:bfloat16:auto:none:off --case cpu:float32:bfloat16:int4:on
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from typing import Any

import httpx

from bench.client import load_tokenizer, normalize_base_url
from bench.workloads import TextSource


async def stream_times(c: httpx.AsyncClient, url: str, model: str, prompt: str,
                       max_tokens: int, sampling: dict | None = None) -> list[float]:
    """perf_counter() arrival time of every content chunk."""
    times: list[float] = []
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0,
            "ignore_eos": True, "stream": True, **(sampling or {})}
    async with c.stream("POST", f"{url}/completions", json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if line.startswith("data:") and "[DONE]" not in line:
                obj = json.loads(line[5:])
                if obj.get("choices") and obj["choices"][0].get("text"):
                    times.append(time.perf_counter())
    return times


async def probe(url: str, contexts: list[int], batches: list[int], steps: int,
                tokenizer: Any, sampling: dict | None = None) -> list[dict[str, Any]]:
    src, rng = TextSource(tokenizer), random.Random(7)
    rows = []
    async with httpx.AsyncClient(timeout=900) as c:
        model = (await c.get(f"{url}/models")).json()["data"][0]["id"]
        await stream_times(c, url, model, "Warm up.", 4)
        for ctx in contexts:
            t0 = time.perf_counter()
            await stream_times(c, url, model, src.text(rng, ctx), 1)
            prefill_ms = 1000 * (time.perf_counter() - t0)
            for b in batches:
                prompts = [src.text(rng, ctx) for _ in range(b)]
                res = await asyncio.gather(*(stream_times(c, url, model, p, steps + 1,
                                                          sampling) for p in prompts))
                # From the moment the last request got its first token, all b decode together.
                start, end = max(r[0] for r in res), max(r[-1] for r in res)
                n = min(sum(1 for t in r if t > start) for r in res)
                step_ms = 1000 * (end - start) / max(n, 1)
                rows.append({"context": ctx, "batch": b, "decode_ms_per_step": step_ms,
                             "decode_ms_per_token": step_ms / b, "prefill_ms": prefill_ms})
                print(f"| {ctx} | {b} | {step_ms:.0f} | {step_ms / b:.1f} | {prefill_ms:.0f} |",
                      flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.bench_decode", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base-url", default=None)
    ap.add_argument("--in-process", action="store_true",
                    help="drive a ModelRunner in this process (see bench/decode_step.py)")
    ap.add_argument("--model", default=None, help="model dir (in-process; default: radixrt's)")
    ap.add_argument("--backends", default="torch,cpu", help="in-process attention backends")
    ap.add_argument("--dtypes", default="float32", help="in-process model dtypes")
    ap.add_argument("--kv-dtypes", default="auto", help="in-process KV-cache dtypes")
    ap.add_argument("--quantizations", default="auto", help="in-process weight quantizations")
    ap.add_argument("--fused", default="flat",
                    help="in-process: fused CPU norm/RoPE per case: off, on (through the "
                         "modules) and/or flat (the flat CPU loop, what the server runs)")
    ap.add_argument("--case", action="append", default=[],
                    help="in-process: an explicit case backend:dtype:kv_dtype:quantization:fused"
                         "[:kv_layout] (kv_layout auto, token or head; quantization +det, e.g. "
                         "int4+det or none+det: with --deterministic's kernels; none+torch: "
                         "float linears on torch's BLAS only, not radixrt's dense kernel; "
                         "repeatable; replaces the cross product of the options above)")
    ap.add_argument("--threads", type=int, default=None, help="in-process torch threads")
    ap.add_argument("--profile", action="store_true", help="in-process: torch.profiler top ops")
    ap.add_argument("--contexts", default="16,1024,2048")
    ap.add_argument("--batch-sizes", default="1,8")
    ap.add_argument("--steps", type=int, default=48, help="decode steps per measurement")
    ap.add_argument("--tokenizer", default=None, help="HF tokenizer dir (default: radixrt's)")
    ap.add_argument("--sampling", type=json.loads, default=None, metavar="JSON",
                    help='server: request fields over greedy, e.g. \'{"temperature": 0.7, '
                         '"top_p": 0.9}\'')
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if args.in_process:
        from bench.decode_step import run_in_process

        rows = run_in_process(args)
    elif not args.base_url:
        ap.error("--base-url is required unless --in-process")
    else:
        print("| Context | Batch | Decode ms/step | ms/token | Prefill of one prompt (ms) |")
        print("|---|---|---|---|---|")
        rows = asyncio.run(probe(normalize_base_url(args.base_url),
                                 [int(x) for x in args.contexts.split(",")],
                                 [int(x) for x in args.batch_sizes.split(",")], args.steps,
                                 load_tokenizer(args.tokenizer), args.sampling))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0

if __name__ == "__main__":
    raise SystemExit(main())
