"""Structured output cost: decode throughput with a JSON schema vs unconstrained (batch 1, 8,
32, in-process scheduler + runner on the default model), compile time per schema and the
compile cache's effect.

    python -m bench.bench_grammar [--batches 1,8,32] [--steps 24] [--reps 3]

Both arms decode the same number of tokens (max_new_tokens, the schema's outputs are longer),
A/B interleaved in one process; the medians over --reps are reported.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

from radixrt.config import build_engine_config
from radixrt.default_model import default_model_dir
from radixrt.testing.local_engine import LocalEngine
from radixrt.testing.schemas import SCHEMAS

# Long outputs under a real schema: 40 bounded integers plus a short string.
LONG_SCHEMA = {"type": "object", "properties": {
    "values": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 999},
               "minItems": 40, "maxItems": 40},
    "label": {"type": "string", "maxLength": 8}}, "required": ["values", "label"]}


def run_arm(engine: LocalEngine, batch: int, steps: int, schema: str | None, tag: str) -> float:
    """Decoded tokens per second of `batch` requests doing `steps` tokens each."""
    prompt = list(range(100, 116))
    sp: dict[str, Any] = {"max_new_tokens": steps, "temperature": 1.0, "ignore_eos": True}
    if schema is not None:
        sp["json_schema"] = schema
    for i in range(batch):
        engine.add(f"{tag}-{i}", prompt, {**sp, "seed": i})
    t0 = time.perf_counter()
    outs = engine.run()
    dt = time.perf_counter() - t0
    n = sum(len(outs[f"{tag}-{i}"].output_ids) for i in range(batch))
    return n / dt


def compile_times(engine: LocalEngine) -> list[dict[str, Any]]:
    hook = engine.scheduler.grammar
    t0 = time.perf_counter()
    hook.compiler.vocabulary()
    rows = [{"what": "vocabulary", "ms": 1000 * (time.perf_counter() - t0)}]
    for i, schema in enumerate(SCHEMAS):
        key = ("json", json.dumps(schema))
        t0 = time.perf_counter()
        hook.compiler.submit(key).result()
        cold = time.perf_counter() - t0
        t0 = time.perf_counter()
        hook.compiler.submit(key).result()
        warm = time.perf_counter() - t0
        rows.append({"what": f"schema {i}", "ms": 1000 * cold, "cached_ms": 1000 * warm})
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--dtype", default="auto", help="model dtype (default: what the server "
                    "picks on this machine, with its default quantization)")
    args = ap.parse_args(argv)
    path = default_model_dir()
    engine = LocalEngine(build_engine_config(str(path), dtype=args.dtype, page_size=16,
                                             max_total_tokens=32 * 1024))
    for row in compile_times(engine):
        print(json.dumps(row))
    schema = json.dumps(LONG_SCHEMA)
    engine.scheduler.grammar.compiler.submit(("json", schema)).result()  # compile off the clock
    run_arm(engine, 2, 4, None, "warm")
    for b in [int(x) for x in args.batches.split(",")]:
        free, constrained = [], []
        for r in range(args.reps):
            free.append(run_arm(engine, b, args.steps, None, f"f{b}-{r}"))
            constrained.append(run_arm(engine, b, args.steps, schema, f"c{b}-{r}"))
        f, c = statistics.median(free), statistics.median(constrained)
        print(json.dumps({"batch": b, "free_tok_s": round(f, 1), "schema_tok_s": round(c, 1),
                          "overhead_pct": round(100 * (f - c) / f, 1)}))


if __name__ == "__main__":
    main()
