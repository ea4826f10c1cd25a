"""Float32 / bfloat16 linears on the CPU through radixrt._dense_cpu (csrc/dense_cpu.cpp).

One kernel, two reasons:
- Speed. torch's CPU linear is slow at decode row counts on some CPUs: on this project's AMD
  EPYC (AVX2) the kernel is 1.5-3.7x faster at 1-64 rows in float32 and 4-5x faster at every
  row count in bfloat16, which torch emulates there (docs/benchmarks.md). Up to how many
  rows it is faster depends on the CPU and torch's BLAS, so the first start measures it for
  the model's projection shapes and dtype and caches the verdict per CPU and torch version
  (kernel_rows); calls of up to that many rows take the kernel, larger ones torch.
- --deterministic. The kernel sums each output in one order whatever the row count, so a
  row computed alone and among 40 others rounds the same; under --deterministic every call
  takes it (torch picks its kernel and its split of K by the call's shape).

Float32 activations also run with 16-bit weights: a bf16 or fp16 checkpoint served in float32
keeps its matrices as published (narrow_storage), half the memory and half the bytes a decode
step reads, with the results of the widened float32 weights (widening is exact; torch's route
widens them per call).
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import torch
from torch import nn
from torch.nn import functional as F

from radixrt.dtype_probe import model_shapes, probe_key
from radixrt.json_cache import read_entries, write_entry

logger = logging.getLogger("radixrt")

DTYPES = (torch.float32, torch.bfloat16)  # what the kernel computes in
# How weights may be stored under float32 activations (16-bit checkpoints kept as published).
NARROW = (torch.bfloat16, torch.float16)
_CODES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}  # csrc/dense_cpu.cpp's
CACHE_FILE = "dense_probe.json"
PROBE_ROWS = (1, 4, 16, 64, 256)
UNLIMITED = sys.maxsize  # clearly faster at every probed row count: every call
WIN, CLEAR = 0.95, 0.8  # kernel / torch time that counts as a win, and as a clear one
# RADIXRT_DENSE_ROWS=N routes calls of up to N rows through the kernel without measuring
# (0: torch always; A/B benchmarks, debugging).
ROWS_ENV = "RADIXRT_DENSE_ROWS"
# RADIXRT_WIDEN_WEIGHTS=1: a 16-bit checkpoint run in float32 is widened at load (A/B).
WEIGHTS_ENV = "RADIXRT_WIDEN_WEIGHTS"
# In the probe's cache key: bump it when the kernel or its wrapper changes speed.
PROBE_VERSION = 3


@functools.cache
def native() -> ModuleType | None:
    """radixrt._dense_cpu, imported after torch (it shares torch's libgomp), or None."""
    try:
        from radixrt import _dense_cpu
    except ImportError:
        return None
    return _dense_cpu


def _ext() -> ModuleType:
    ext = native()
    if ext is None:
        raise RuntimeError("the dense CPU kernel radixrt._dense_cpu is not built: "
                           "`pip install -e .` or `python setup.py build_ext --inplace`")
    return ext


def _kernel_dtypes_ok(x_dtype: torch.dtype, w_dtype: torch.dtype) -> bool:
    """What the kernel multiplies: both float32, both bfloat16, or float32 x 16-bit W."""
    return x_dtype in DTYPES and (x_dtype is w_dtype or (
        x_dtype is torch.float32 and w_dtype in NARROW))


def matmul(x: torch.Tensor, weight: torch.Tensor, portable: bool = False) -> torch.Tensor:
    """y [M, N] float32 = x [M, K] @ weight [N, K]^T on the CPU (both float32, both bfloat16,
    or float32 x with a bfloat16 or float16 weight), accumulated in float32 in one order per
    output (portable: the scalar loops, which give the AVX2 kernel's bits)."""
    if (x.dim() != 2 or weight.dim() != 2 or x.shape[1] != weight.shape[1]
            or not _kernel_dtypes_ok(x.dtype, weight.dtype)
            or x.device.type != "cpu" or weight.device.type != "cpu"):
        raise ValueError(f"matmul: x [M, K] and weight [N, K] on the CPU, both float32, both "
                         f"bfloat16 or float32 x 16-bit; got {x.dtype} {tuple(x.shape)} on "
                         f"{x.device}, {weight.dtype} {tuple(weight.shape)} on {weight.device}")
    x, weight = x.contiguous(), weight.contiguous()
    (rows, k), n = x.shape, weight.shape[0]
    y = torch.empty(rows, n, dtype=torch.float32)
    _ext().matmul(x.data_ptr(), rows, k, weight.data_ptr(), n, y.data_ptr(),
                  _CODES[x.dtype], _CODES[weight.dtype], torch.get_num_threads(), portable)
    return y


def _flat_kernel(w_dtype: torch.dtype) -> Callable[..., None]:
    """float32 x W (stored as w_dtype) in the signature of radixrt._quant_cpu's kernels, the
    flat loop's: kernel(x, M, K, w, N, y, threads, path code, unused here)."""
    w_code = _CODES[w_dtype]

    def kernel(x: int, rows: int, k: int, w: int, n: int, y: int, threads: int,
               _path: int) -> None:
        _ext().matmul(x, rows, k, w, n, y, 0, w_code, threads, False)

    return kernel


FLAT_KERNELS = {dtype: _flat_kernel(dtype) for dtype in (torch.float32, *NARROW)}


def torch_linear(x: torch.Tensor, weight: torch.Tensor,
                 bias: torch.Tensor | None = None) -> torch.Tensor:
    """torch's linear, the weight widened to x's dtype first where it is stored narrower."""
    return F.linear(x, weight if weight.dtype is x.dtype else _widened(weight, x.dtype), bias)


_scratch: dict[torch.dtype, torch.Tensor] = {}
SCRATCH_MAX_BYTES = 512 << 20  # a 7-8B model's gate_up in float32 is 470 MiB


def _widened(weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """weight in dtype, in a buffer reused from call to call: a fresh tensor the size of a
    weight comes from the kernel page by page, and the page faults cost ~6x the copy (a 1B
    model's 512-token prefill chunk took 27 % longer that way). Valid until the next call.
    A weight above SCRATCH_MAX_BYTES (a large vocabulary's lm_head, rarely called with many
    rows) is widened into a fresh tensor rather than held on to."""
    if weight.numel() * dtype.itemsize > SCRATCH_MAX_BYTES:
        return weight.to(dtype)
    buf = _scratch.get(dtype)
    if buf is None or buf.numel() < weight.numel():
        with torch.inference_mode(False):  # a normal tensor: written in and out of the mode
            buf = _scratch[dtype] = torch.empty(weight.numel(), dtype=dtype)
    out = buf[: weight.numel()].view(weight.shape)
    out.copy_(weight)
    return out


class DenseLinear(nn.Module):
    """An nn.Linear's weight and bias: calls of up to kernel_rows rows (all of them when
    batch_invariant) through the kernel, the output rounded once to the input's dtype as
    torch's linear rounds it; larger calls through torch."""

    def __init__(self, linear: nn.Linear, kernel_rows: int, batch_invariant: bool) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = linear.weight  # the same Parameter: a tied lm_head stays tied
        self.bias = linear.bias
        self.kernel_rows = kernel_rows
        self.batch_invariant = batch_invariant

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // self.in_features
        if not self.batch_invariant and rows > self.kernel_rows:
            return torch_linear(x, self.weight, self.bias)
        w = self.weight
        if _kernel_dtypes_ok(x.dtype, w.dtype) and x.is_contiguous() and x.device.type == "cpu":
            # Straight to the kernel, into an output of the final shape: matmul's checks and
            # a reshape cost more than a decode call's arithmetic on a small model (the
            # weight was checked at install).
            y = torch.empty((*x.shape[:-1], self.out_features), dtype=torch.float32)
            _ext().matmul(x.data_ptr(), rows, self.in_features, w.data_ptr(),
                          self.out_features, y.data_ptr(), _CODES[x.dtype], _CODES[w.dtype],
                          torch.get_num_threads(), False)
        else:
            y = matmul(x.reshape(rows, self.in_features), w).view(*x.shape[:-1],
                                                                  self.out_features)
        if self.bias is not None:
            y += self.bias.float()
        return y if x.dtype is torch.float32 else y.to(x.dtype)

    def _decode_call(self) -> tuple:
        """(weight pointer, kernel, trailing args) for the flat CPU loop (cpu_flat), which
        calls QuantizedLinear's packed kernels the same way: kernel(x, M, K, *args, y,
        threads, code)."""
        w = self.weight
        if w.dtype not in FLAT_KERNELS or w.device.type != "cpu" or not w.is_contiguous():
            raise ValueError("the flat loop runs float32 or 16-bit CPU weights only")
        return w.data_ptr(), FLAT_KERNELS[w.dtype], (w.data_ptr(), self.out_features)

    def extra_repr(self) -> str:
        rows = "all" if self.batch_invariant or self.kernel_rows == UNLIMITED \
            else f"<= {self.kernel_rows}"
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, kernel rows {rows}"
                + (", batch-invariant" if self.batch_invariant else ""))


def float_linears(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    """(name, module) of every plain nn.Linear in `model` (quantized ones are not)."""
    return [(n, m) for n, m in model.named_modules() if type(m) is nn.Linear]


def install(model: nn.Module, kernel_rows: int, batch_invariant: bool = False,
            activation_dtype: torch.dtype | None = None) -> int:
    """Replace every CPU nn.Linear of `model` that the kernel multiplies by a DenseLinear
    (same parameters, no copy); returns how many. activation_dtype: the model's (default:
    each weight's own; float32 takes 16-bit weights too). batch_invariant: every call through
    the kernel, and any other linear is an error (it would break the promise)."""
    count = 0
    for name, module in float_linears(model):
        w_dtype = module.weight.dtype
        if (not _kernel_dtypes_ok(activation_dtype or w_dtype, w_dtype)
                or module.weight.device.type != "cpu"):
            if batch_invariant:
                raise ValueError(f"{name}: no batch-invariant kernel for "
                                 f"{module.weight.dtype} weights on {module.weight.device}")
            continue
        _ext()
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child,
                DenseLinear(module, kernel_rows, batch_invariant))
        count += 1
    return count


# ------------------------------------------------------------------------------ the probe


def measure(shapes: list[tuple[int, int]], dtype: torch.dtype, min_seconds: float = 0.01,
            max_pass_seconds: float = 0.2, weight_dtype: torch.dtype | None = None
            ) -> dict[int, tuple[float, float]]:
    """rows -> (kernel µs, torch µs): the best of at least 3 passes over every (out, in)
    shape, and of as many as fit in min_seconds (the best, not the median: other processes
    on the machine only ever add time). Larger row counts are left out once one pass takes
    max_pass_seconds (a big model on few cores: the probe must not hold up the start).
    weight_dtype: how the weights are stored (default: dtype). torch is then timed on weights
    widened beforehand: its GEMM alone, a lower bound of its route, which widens per call
    (timing that would hold up a big model's start for nothing: below the verdict the kernel
    wins anyway, above it the GEMM's arithmetic dwarfs the widening)."""
    gen = torch.Generator().manual_seed(0)
    stored = [torch.randn(n, k, generator=gen).to(weight_dtype or dtype) for n, k in shapes]
    routes = ((matmul, stored), (F.linear, [w.to(dtype) for w in stored]))
    out: dict[int, tuple[float, float]] = {}
    with torch.inference_mode():
        for rows in PROBE_ROWS:
            xs = [torch.randn(rows, k, generator=gen).to(dtype) for _, k in shapes]
            best = []
            for fn, weights in routes:
                for x, w in zip(xs, weights):  # warm-up (and oneDNN's first-call setup)
                    fn(x, w)
                times: list[float] = []
                while len(times) < 3 or sum(times) < min_seconds:
                    t0 = time.perf_counter()
                    for x, w in zip(xs, weights):
                        fn(x, w)
                    times.append(time.perf_counter() - t0)
                best.append(min(times) * 1e6)
            out[rows] = (best[0], best[1])
            if max(best) > max_pass_seconds * 1e6:
                break
    return out


def verdict(times: dict[int, tuple[float, float]]) -> int:
    """The largest probed row count where the kernel wins (its time below WIN x torch's)
    and it lost clearly (above torch's / WIN) at no smaller one; ties in between are noise,
    either way is fine. UNLIMITED when it also wins the last probe (of all PROBE_ROWS) by
    CLEAR (past it, both are compute-bound and the ratio holds; a thin margin there, or a
    probe cut short, would not say so)."""
    rows = 0
    for r in sorted(times):
        kernel, torch_us = times[r]
        if kernel > torch_us / WIN:
            break
        if kernel < WIN * torch_us:
            rows = r
    last = max(times)
    kernel, torch_us = times[last]
    return (UNLIMITED if rows == last == PROBE_ROWS[-1] and kernel < CLEAR * torch_us
            else rows)


def kernel_rows(model_path: str | Path | None, dtype: torch.dtype,
                cache_dir: Path | None = None, weight_dtype: torch.dtype | None = None) -> int:
    """Calls of up to this many rows are faster through the kernel here: $RADIXRT_DENSE_ROWS,
    else cached, else measured (~0.1-1 s at a model's first start) and cached. 0 where the
    kernel is not built. weight_dtype: how the weights are stored (default: dtype)."""
    if os.environ.get(ROWS_ENV):
        return int(os.environ[ROWS_ENV])
    weight_dtype = weight_dtype or dtype
    if native() is None or not _kernel_dtypes_ok(dtype, weight_dtype):
        return 0
    from radixrt.default_model import cache_root

    shapes = model_shapes(model_path)
    name = str(dtype).removeprefix("torch.")
    if weight_dtype is not dtype:
        name += f" x {str(weight_dtype).removeprefix('torch.')} weights"
    key = f"{probe_key(shapes)} | dense v{PROBE_VERSION} | {name}"
    file = (cache_dir or cache_root()) / CACHE_FILE
    entry = read_entries(file).get(key)
    if isinstance(entry, dict) and isinstance(entry.get("kernel_rows"), int):
        return entry["kernel_rows"]
    logger.info("timing radixrt's dense kernel against torch's linear at the model's shapes "
                "(first start on this CPU; cached)")
    times = measure(shapes, dtype, weight_dtype=weight_dtype)
    rows = verdict(times)
    write_entry(file, key, {"kernel_rows": rows, "measured": time.strftime("%Y-%m-%dT%H:%M:%S"),
                            "us": {str(r): [round(a, 1), round(b, 1)] for r, (a, b) in
                                   times.items()}})
    return rows


# ------------------------------------------------------------------- bf16 checkpoints


def checkpoint_matrix_dtypes(files: list[Path]) -> set[str]:
    """The safetensors dtypes ("BF16", "F32", ...) of a checkpoint's 2-D tensors, from the
    files' headers (nothing else is read)."""
    import json
    import struct

    found: set[str] = set()
    for f in files:
        with open(f, "rb") as fh:
            (size,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(size))
        found.update(t["dtype"] for name, t in header.items()
                     if name != "__metadata__" and len(t.get("shape", ())) == 2)
    return found


def narrow_storage(model_path: str | Path, dtype: torch.dtype, device: torch.device,
                   quantization: str) -> torch.dtype | None:
    """bfloat16 or float16 where a CPU float32 run keeps the linear and embedding matrices
    as the checkpoint has them (all bf16, or all fp16) and the kernel is built; else None
    (widened to dtype at load). $RADIXRT_WIDEN_WEIGHTS=1 always widens (A/B benchmarks)."""
    if not (os.environ.get(WEIGHTS_ENV, "0") != "1" and device.type == "cpu"
            and dtype is torch.float32 and quantization == "none" and native() is not None):
        return None
    from radixrt.models.loader import safetensors_files

    found = checkpoint_matrix_dtypes(safetensors_files(Path(model_path)))
    return {frozenset({"BF16"}): torch.bfloat16,
            frozenset({"F16"}): torch.float16}.get(frozenset(found))
