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

The down projection may also take the gate_up projection's output as it is and apply
SiLU-and-mul as it loads it (`silu_mul`): that saves the activation's kernel, a few
microseconds in each of the step's layers (~0.15 ms of the H200's 5 ms batch-1 step). install
times that variant beside the others, the activation included in every timing.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from radixrt.models import fused_cuda

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
             BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SILU_MUL: tl.constexpr):
        # SILU_MUL: x_ptr holds [gate (K) | up (K)]; the input is silu(gate) * up, rounded to
        # the activation dtype as the separate kernel's output would be.
        rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        row_ok = rows < N
        acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            cols = k0 + tl.arange(0, BLOCK_K)
            col_ok = cols < K
            x = tl.load(x_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
            if SILU_MUL:
                up = tl.load(x_ptr + K + cols, mask=col_ok, other=0.0).to(tl.float32)
                x = (x * tl.sigmoid(x) * up).to(x_ptr.dtype.element_ty).to(tl.float32)
            w = tl.load(w_ptr + rows[:, None] * stride_w + cols[None, :],
                        mask=row_ok[:, None] & col_ok[None, :], other=0.0,
                        eviction_policy="evict_first")
            acc += w.to(tl.float32) * x[None, :]
        tl.store(y_ptr + rows, tl.sum(acc, axis=1).to(y_ptr.dtype.element_ty), mask=row_ok)

    _kernel = (triton, gemv)
    return _kernel


def gemv(x: torch.Tensor, weight: torch.Tensor, config: tuple[int, int, int],
         silu_mul: bool = False) -> torch.Tensor:
    """x [1, K] @ weight[N, K]^T -> [1, N] (fp32 accumulation), one program per BLOCK_N rows.
    silu_mul: x is [1, 2K], gate then up, and the product is silu(gate) * up @ weight^T."""
    loaded = _load_kernel()
    if loaded is None:
        raise RuntimeError("the Triton GEMV needs the triton package")
    triton, kernel = loaded
    n, k = weight.shape
    if x.shape[-1] != (2 * k if silu_mul else k):
        raise ValueError(f"GEMV input of width {x.shape[-1]} for a weight of {k} columns"
                         + (" (silu_mul: gate and up, twice that)" if silu_mul else ""))
    block_n, block_k, warps = config
    x = x.contiguous()
    y = torch.empty((1, n), dtype=x.dtype, device=x.device)
    kernel[(triton.cdiv(n, block_n),)](x, weight, y, n, k, weight.stride(0),
                                       BLOCK_N=block_n, BLOCK_K=block_k, SILU_MUL=silu_mul,
                                       num_warps=warps)
    return y


class GemvLinear(nn.Module):
    """A bias-free nn.Linear whose one-token calls run the GEMV (same weight Parameter, same
    state-dict names). silu_mul: it is a down projection that takes the gate_up output
    through forward_gate_up in one kernel."""

    def __init__(self, linear: nn.Linear, config: tuple[int, int, int],
                 silu_mul: bool = False) -> None:
        super().__init__()
        self.weight = linear.weight
        self.config = config
        self.silu_mul = silu_mul

    def _one_token(self, x: torch.Tensor) -> bool:
        return enabled and x.dim() == 2 and x.shape[0] == 1 and x.dtype == self.weight.dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._one_token(x):
            return gemv(x, self.weight, self.config)
        return F.linear(x, self.weight)

    def forward_gate_up(self, gate_up: torch.Tensor) -> torch.Tensor:
        """down(silu(gate) * up) from the gate_up projection's output [T, 2K]."""
        if self.silu_mul and self._one_token(gate_up):
            return gemv(gate_up, self.weight, self.config, silu_mul=True)
        return self(fused_cuda.silu_and_mul(gate_up))


def down_from_gate_up(down: nn.Module, gate_up: torch.Tensor) -> torch.Tensor:
    """An MLP's down projection of silu(gate) * up, fused into a one-token GEMV where install
    chose that for this module."""
    if isinstance(down, GemvLinear):
        return down.forward_gate_up(gate_up)
    return down(fused_cuda.silu_and_mul(gate_up))


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


def _takes_gate_up(parent: nn.Module, name: str, linear: nn.Linear) -> bool:
    """True for an MLP's down projection fed silu(gate) * up from a gate_up projection."""
    gate_up = getattr(parent, "gate_up_proj", None)
    return (name == "down_proj" and isinstance(gate_up, nn.Module)
            and getattr(gate_up, "weight", None) is not None
            and gate_up.weight.shape[0] == 2 * linear.weight.shape[1])


# A candidate: (block config, fused SiLU-and-mul); BLAS is F.linear.
Candidate = tuple[tuple[int, int, int] | None, bool]
BLAS: Candidate = (None, False)


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
        gate_up = all(_takes_gate_up(*m) for m in members)
        # What the layer is handed: for a down projection, the gate_up output (every candidate
        # then pays for the activation, fused or as its own kernel).
        x = torch.randn(1, w0.shape[1] * (2 if gate_up else 1), device=device, dtype=w0.dtype)

        def call(w: torch.Tensor, cand: Candidate, x: torch.Tensor = x,
                 gate_up: bool = gate_up) -> torch.Tensor:
            cfg, fused = cand
            if fused:
                assert cfg is not None
                return gemv(x, w, cfg, silu_mul=True)
            h = fused_cuda.silu_and_mul(x) if gate_up else x
            return F.linear(h, w) if cfg is None else gemv(h, w, cfg)

        cands: list[Candidate] = [(cfg, fused) for fused in ((False, True) if gate_up
                                                              else (False,))
                                  for cfg in CONFIGS]
        try:
            ref = call(w0, BLAS).float()
            base = time_calls(lambda w: call(w, BLAS), weights, graphs)
            best: tuple[float, Candidate] | None = None
            for cand in cands:
                got = call(w0, cand).float()
                err = float((got - ref).norm() / ref.norm().clamp_min(1e-12))
                if err > 1e-2:
                    raise RuntimeError(f"{describe(cand)} disagrees with F.linear "
                                       f"(rel err {err:.1e})")
                t = time_calls(lambda w, cand=cand: call(w, cand), weights, graphs)
                if best is None or t < best[0]:
                    best = (t, cand)
        except Exception as e:  # a failed build or launch: keep cuBLAS
            status[role] = f"F.linear (GEMV failed: {type(e).__name__}: {e})"
            logger.warning("one-token GEMV for %s switched off: %s", role, e)
            continue
        assert best is not None
        t, cand = best
        # The best of several noisy timings is biased low: the winner is timed afresh and meets
        # F.linear's faster of two timings, so a noise win does not swap in the GEMV.
        base = min(base, time_calls(lambda w: call(w, BLAS), weights, graphs))
        t = time_calls(lambda w, cand=cand: call(w, cand), weights, graphs)
        shape = "x".join(map(str, w0.shape))
        if t < (1 - min_gain) * base:
            cfg, fused = cand
            assert cfg is not None
            for parent, name, module in members:
                setattr(parent, name, GemvLinear(module, cfg, silu_mul=fused))
            status[role] = (f"{describe(cand)} {t * 1e6:.1f} us vs F.linear {base * 1e6:.1f} us "
                            f"({shape})")
        else:
            status[role] = (f"F.linear {base * 1e6:.1f} us vs {describe(cand)} {t * 1e6:.1f} us "
                            f"({shape})")
    return status


def describe(cand: Candidate) -> str:
    cfg, fused = cand
    return "F.linear" if cfg is None else f"gemv{'+silu_mul' if fused else ''} {cfg}"
