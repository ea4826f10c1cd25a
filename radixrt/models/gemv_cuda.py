"""One-token linear layers on CUDA through a Triton GEMV, where it measures faster than cuBLAS.

A batch-1 decode step is the model's weights read once: on the H200, cuBLAS's kernels read the
q/k/v and o projections at ~65 % of the bandwidth and the down projection needs a split-K
pass plus a reduce kernel (docs/benchmarks.md). A GEMV that gives each program a few output
rows and streams the whole input dimension needs neither. Whether it wins depends on the
card and the shape, so nothing is assumed: when a CUDA model runner starts, `install` times
each of the model's projection shapes at one token, cuBLAS against every block config here,
reading the layers' own weights in turn (so no timing reads weights left in the L2 by the
last), replayed from a CUDA graph when decode steps will be. It swaps in a `GemvLinear` only
where the best config is faster by MIN_GAIN and agrees with F.linear. Everything else, and
every batch of more than one token, stays F.linear. RADIXRT_GEMV=0 turns it off; without
triton it is off.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

ENV = "RADIXRT_GEMV"
logger = logging.getLogger("radixrt")
# (rows per program, input elements per loop step, warps): small row blocks keep enough
# programs in flight on 132 SMs for the 4096-row projections; long K steps keep loads wide.
CONFIGS = ((4, 1024, 4), (8, 512, 4), (8, 1024, 8), (16, 256, 4), (16, 512, 8), (32, 256, 8))
MIN_GAIN = 0.03  # the GEMV must be this much faster than F.linear to be used
enabled = True  # False: installed GemvLinears run F.linear (benchmarks' A/B; read per call)
_kernel: Any = None


def _load_kernel() -> Any:
    """The Triton kernel, compiled lazily (None: triton is missing)."""
    global _kernel
    if _kernel is not None:
        return _kernel
    try:
        import triton
        import triton.language as tl
    except ImportError:
        return None

    @triton.jit
    def gemv(x_ptr, w_ptr, y_ptr, N, K, stride_w,  # noqa: ANN001
             BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        row_ok = rows < N
        acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            cols = k0 + tl.arange(0, BLOCK_K)
            col_ok = cols < K
            x = tl.load(x_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
            w = tl.load(w_ptr + rows[:, None] * stride_w + cols[None, :],
                        mask=row_ok[:, None] & col_ok[None, :], other=0.0,
                        eviction_policy="evict_first")
            acc += w.to(tl.float32) * x[None, :]
        tl.store(y_ptr + rows, tl.sum(acc, axis=1).to(y_ptr.dtype.element_ty), mask=row_ok)

    _kernel = (triton, gemv)
    return _kernel


def gemv(x: torch.Tensor, weight: torch.Tensor, config: tuple[int, int, int]) -> torch.Tensor:
    """x [1, K] @ weight[N, K]^T -> [1, N] (fp32 accumulation), one program per BLOCK_N rows."""
    loaded = _load_kernel()
    if loaded is None:
        raise RuntimeError("the Triton GEMV needs the triton package")
    triton, kernel = loaded
    n, k = weight.shape
    block_n, block_k, warps = config
    x = x.contiguous()
    y = torch.empty((1, n), dtype=x.dtype, device=x.device)
    kernel[(triton.cdiv(n, block_n),)](x, weight, y, n, k, weight.stride(0),
                                       BLOCK_N=block_n, BLOCK_K=block_k, num_warps=warps)
    return y


class GemvLinear(nn.Module):
    """A bias-free nn.Linear whose one-token calls run the GEMV (same weight Parameter, same
    state-dict names)."""

    def __init__(self, linear: nn.Linear, config: tuple[int, int, int]) -> None:
        super().__init__()
        self.weight = linear.weight
        self.config = config

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if enabled and x.dim() == 2 and x.shape[0] == 1 and x.dtype == self.weight.dtype:
            return gemv(x, self.weight, self.config)
        return F.linear(x, self.weight)


def _projections(model: nn.Module) -> dict[str, list[tuple[nn.Module, str, nn.Linear]]]:
    """Bias-free nn.Linear children grouped by role: (parent, attribute, module)."""
    groups: dict[str, list[tuple[nn.Module, str, nn.Linear]]] = {}
    for parent in model.modules():
        for name, child in parent.named_children():
            if type(child) is nn.Linear and child.bias is None:
                groups.setdefault(name, []).append((parent, name, child))
    return groups


def time_calls(fn: Any, weights: list[torch.Tensor], graphs: bool, reps: int = 3) -> float:
    """Seconds per call, cycling through `weights` (each layer's own). graphs: the calls
    replayed from a CUDA graph, as decode steps run them (a Triton launch from Python costs
    tens of microseconds of host time that a graph does not pay); else launched one by one."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for w in weights[:2]:  # compile, allocate
            fn(w)
    torch.cuda.current_stream().wait_stream(stream)
    graph = None
    if graphs:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream):
            for w in weights:
                fn(w)
        graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        if graph is not None:
            graph.replay()
        else:
            for w in weights:
                fn(w)
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3 / (reps * len(weights))


@torch.inference_mode()
def install(model: nn.Module, device: torch.device, graphs: bool = True,
            min_gain: float = MIN_GAIN) -> dict[str, str]:
    """Swap the projections whose one-token GEMV beats F.linear by min_gain (see the module
    docstring), timed as the decode steps will run: replayed from CUDA graphs when `graphs`.
    Returns projection -> what it runs and why, for the log."""
    if device.type != "cuda" or os.environ.get(ENV, "1") == "0":
        return {}
    if _load_kernel() is None:
        return {"all": "F.linear (no triton)"}
    status: dict[str, str] = {}
    for role, members in _projections(model).items():
        weights = [m.weight for _, _, m in members]
        w0 = weights[0]
        if any(w.shape != w0.shape or w.dtype != w0.dtype for w in weights):
            status[role] = "F.linear (mixed shapes)"
            continue
        # The kernel's offsets are 32-bit and it reads rows as packed.
        if w0.numel() >= 2**31 or any(w.stride(1) != 1 for w in weights):
            status[role] = "F.linear (weights over 2^31 elements or rows not packed)"
            continue
        x = torch.randn(1, w0.shape[1], device=device, dtype=w0.dtype)
        try:
            ref = F.linear(x, w0).float()
            base = time_calls(lambda w, x=x: F.linear(x, w), weights, graphs)
            best: tuple[float, tuple[int, int, int]] | None = None
            for cfg in CONFIGS:
                got = gemv(x, w0, cfg).float()
                err = float((got - ref).norm() / ref.norm().clamp_min(1e-12))
                if err > 1e-2:
                    raise RuntimeError(f"config {cfg} disagrees with F.linear (rel err {err:.1e})")
                t = time_calls(lambda w, x=x, cfg=cfg: gemv(x, w, cfg), weights, graphs)
                if best is None or t < best[0]:
                    best = (t, cfg)
        except Exception as e:  # a failed build or launch: keep cuBLAS
            status[role] = f"F.linear (GEMV failed: {type(e).__name__}: {e})"
            logger.warning("one-token GEMV for %s switched off: %s", role, e)
            continue
        assert best is not None
        t, cfg = best
        # The best of six noisy timings is biased low: the winner is timed afresh and meets
        # F.linear's faster of two timings, so a noise win does not swap in the GEMV.
        base = min(base, time_calls(lambda w, x=x: F.linear(x, w), weights, graphs))
        t = time_calls(lambda w, x=x, cfg=cfg: gemv(x, w, cfg), weights, graphs)
        shape = "x".join(map(str, w0.shape))
        if t < (1 - min_gain) * base:
            for parent, name, module in members:
                setattr(parent, name, GemvLinear(module, cfg))
            status[role] = f"gemv {cfg} {t * 1e6:.1f} us vs F.linear {base * 1e6:.1f} us ({shape})"
        else:
            status[role] = f"F.linear {base * 1e6:.1f} us vs gemv {t * 1e6:.1f} us ({shape})"
    return status
