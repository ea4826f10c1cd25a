"""`--dtype auto` on CPU, by measurement: bf16 only where it is faster here.

Whether bf16 matmuls beat fp32 depends on the CPU (AMX and avx512_bf16 make bf16 2-5x
faster; without them torch emulates it and it is up to 5x slower) and on torch's kernels, not
on a flag that one can read reliably. So the first start times bf16 against fp32 `linear` at
the model's own projection shapes (a few hundred ms) and caches the verdict per CPU, torch
version and shape set in <cache root>/dtype_probe.json (see radixrt.default_model.cache_root).

Nothing here imports torch until a probe has to run: the frontend reads the cache only.
"""

from __future__ import annotations

import os
import platform
import time
from importlib import metadata
from pathlib import Path

from radixrt.json_cache import read_entries, write_entry

CACHE_FILE = "dtype_probe.json"
ROWS = (4, 64)  # a decode batch and a prefill chunk
# bf16 must be at least this much faster overall: within noise, fp32 is the faithful choice.
MARGIN = 0.9
_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def cpu_signature() -> str:
    """CPU model + family/model/stepping + the flags that decide bf16 speed."""
    info: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("model name", "cpu family", "model", "stepping", "flags") \
                        and key not in info:
                    info[key] = value.strip()
                if not line.strip() and info:
                    break  # the first processor is enough
    except OSError:
        pass
    flags = set(info.get("flags", "").split())
    have = ",".join(f for f in _FLAGS if f in flags)
    name = info.get("model name") or platform.processor() or platform.machine()
    fms = "/".join(info.get(k, "?") for k in ("cpu family", "model", "stepping"))
    return f"{name} [{fms}] {{{have}}} x{os.cpu_count()}"


def probe_key(shapes: list[tuple[int, int]]) -> str:
    try:
        torch_version = metadata.version("torch")
    except metadata.PackageNotFoundError:
        torch_version = "?"
    dims = ";".join(f"{n}x{k}" for n, k in shapes)
    return f"{cpu_signature()} | torch {torch_version} | {dims}"


def model_shapes(model_path: str | Path | None) -> list[tuple[int, int]]:
    """(out, in) of the model's fused projections: qkv, o, gate_up, down."""
    from radixrt.models.config import ModelConfig, ModelLoadError

    hidden, inter, q, kv = 576, 1536, 576, 192  # the default model's
    if model_path is not None:
        try:
            cfg = ModelConfig.from_dir(model_path)
        except ModelLoadError:
            pass  # the worker reports a bad model directory properly
        else:
            hidden, inter = cfg.hidden_size, cfg.intermediate_size
            q, kv = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    return [(q + 2 * kv, hidden), (hidden, q), (2 * inter, hidden), (hidden, inter)]


def measure(shapes: list[tuple[int, int]], reps: int = 3) -> dict[str, float]:
    """Best µs of one pass of `linear` over every shape at every ROWS, fp32 vs bf16 (the
    best of a few, not the median: other processes on the machine only ever add time)."""
    import torch
    from torch.nn import functional as F

    gen = torch.Generator().manual_seed(0)
    out: dict[str, float] = {}
    for dtype in (torch.float32, torch.bfloat16):
        pairs = [(torch.randn(m, k, generator=gen).to(dtype), torch.randn(n, k, generator=gen).to(dtype))
                 for m in ROWS for n, k in shapes]
        with torch.inference_mode():
            for x, w in pairs:  # warm-up (and oneDNN's first-call setup)
                F.linear(x, w)
            times = []
            for _ in range(reps):
                t0 = time.perf_counter()
                for x, w in pairs:
                    F.linear(x, w)
                times.append(time.perf_counter() - t0)
        out[str(dtype).removeprefix("torch.")] = min(times) * 1e6
    return out


def cpu_dtype(model_path: str | Path | None = None, cache_dir: Path | None = None) -> str:
    """float32 or bfloat16 for this CPU and model: cached, else measured and cached."""
    from radixrt.default_model import cache_root

    shapes = model_shapes(model_path)
    key = probe_key(shapes)
    file = (cache_dir or cache_root()) / CACHE_FILE
    entry = read_entries(file).get(key)
    if isinstance(entry, dict) and entry.get("dtype") in ("float32", "bfloat16"):
        return str(entry["dtype"])
    times = measure(shapes)
    choice = "bfloat16" if times["bfloat16"] < MARGIN * times["float32"] else "float32"
    entry = {"dtype": choice, "us": {k: round(v, 1) for k, v in times.items()},
             "rows": list(ROWS), "measured": time.strftime("%Y-%m-%dT%H:%M:%S")}
    write_entry(file, key, entry)  # two first starts at once may both measure
    return choice
