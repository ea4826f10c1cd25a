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
every batch of more than one token, stays F.linear (or the cuBLASLt algorithm gemm_cuda
tuned for that batch size). RADIXRT_GEMV=0 turns it off; without
triton it is off.

A GEMV may also apply what comes before the projection as it loads its input (a prologue),
which saves that op's own kernel, a few microseconds in each layer of a step whose GPU time
is ~5 ms on the H200 at batch 1 (docs/benchmarks.md):
- "silu_mul": a down projection takes the gate_up output [gate | up] as it is;
- "rms_norm": qkv, gate_up and lm_head take the residual stream and the layer's input (or,
  for the first layer, the embedding) and apply the residual add and the RMSNorm before
  them: the sum of squares accumulates as the input streams through, and the row's scale
  is applied to the dot products at the end. One program also writes the new residual.
install times those variants beside the others, with the prologue's own op in every
timing, so a fused GEMV is used only where it measures fastest.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from types import ModuleType
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from radixrt.models import fused_cuda, gemm_cuda
from radixrt.models.cuda_timing import cold_cycle, retime_winner, time_calls
from radixrt.triton_jit import LazyKernel, pdl_supported

ENV = "RADIXRT_GEMV"
logger = logging.getLogger("radixrt")
# (rows per program, input elements per loop step, warps): small row blocks keep enough
# programs in flight on 132 SMs for the 4096-row projections; long K steps keep loads wide.
CONFIGS = ((4, 1024, 4), (8, 512, 4), (8, 1024, 8), (16, 256, 4), (16, 512, 8), (32, 256, 8))
MIN_GAIN = 0.03  # the GEMV must be this much faster than F.linear to be used
enabled = True  # False: installed GemvLinears run F.linear (benchmarks' A/B; read per call)
pdl_enabled = True  # False: GEMVs chosen with PDL launch without it (benchmarks' A/B)


# The input helper the kernel calls: Triton resolves a called jit function among the
# caller's module globals (not its closure), so _define puts it here.
_gemv_input: Any = None


def _define(triton: ModuleType, tl: ModuleType) -> Any:
    """The kernel (see LazyKernel)."""

    @triton.jit
    def gemv_input(x_ptr, r_ptr, g_ptr, s_ptr, cols, col_ok, K, pid,  # noqa: ANN001
                   SILU_MUL: tl.constexpr, NORM: tl.constexpr, ADD: tl.constexpr):
        # (the projection's input at cols, in float32; its squares for the norm: 0 without)
        # SILU_MUL: x_ptr holds [gate (K) | up (K)]; the input is silu(gate) * up, rounded to
        # the activation dtype as the separate kernel's output would be.
        # NORM: the input is rms_norm(x) * g (g at g_ptr); ADD: x + r (r at r_ptr) first, that
        # sum rounded as the residual stream stores it, and program 0 writes it to s_ptr.
        x = tl.load(x_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
        if SILU_MUL:
            up = tl.load(x_ptr + K + cols, mask=col_ok, other=0.0).to(tl.float32)
            x = (x * tl.sigmoid(x) * up).to(x_ptr.dtype.element_ty,
                                               fp_downcast_rounding="rtne").to(tl.float32)
        sq = x * 0.0
        if NORM:
            if ADD:
                r = tl.load(r_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
                x = (x + r).to(x_ptr.dtype.element_ty, fp_downcast_rounding="rtne")
                if pid == 0:
                    tl.store(s_ptr + cols, x, mask=col_ok)
                x = x.to(tl.float32)
            sq = x * x
            x = x * tl.load(g_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
        return x, sq

    global _gemv_input
    _gemv_input = gemv_input

    @triton.jit
    def gemv(x_ptr, w_ptr, y_ptr, r_ptr, g_ptr, s_ptr, N, K, stride_w, eps,  # noqa: ANN001
             BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SILU_MUL: tl.constexpr,
             NORM: tl.constexpr, ADD: tl.constexpr, PRE_K: tl.constexpr, PDL: tl.constexpr):
        # PRE_K > 0: the first PRE_K weight columns are loaded before anything else; with PDL
        # (launched as a programmatic dependent) that is before waiting for the kernel ahead,
        # whose output x is, so this program's weights stream in while that kernel finishes.
        pid = tl.program_id(0)
        rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
        row_ok = rows < N
        acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
        sq = tl.zeros((BLOCK_K,), dtype=tl.float32)
        y_pre = tl.zeros((BLOCK_N,), dtype=tl.float32)
        sq_pre = 0.0
        if PRE_K > 0:
            pcols = tl.arange(0, PRE_K)
            p_ok = pcols < K
            w_pre = tl.load(w_ptr + rows[:, None] * stride_w + pcols[None, :],
                            mask=row_ok[:, None] & p_ok[None, :], other=0.0,
                            eviction_policy="evict_first")
            if PDL:
                tl.extra.cuda.gdc_launch_dependents()
                tl.extra.cuda.gdc_wait()
            xp, sqp = _gemv_input(x_ptr, r_ptr, g_ptr, s_ptr, pcols, p_ok, K, pid,
                                 SILU_MUL, NORM, ADD)
            y_pre = tl.sum(w_pre.to(tl.float32) * xp[None, :], axis=1)
            sq_pre = tl.sum(sqp, axis=0)
        for k0 in range(PRE_K, K, BLOCK_K):
            cols = k0 + tl.arange(0, BLOCK_K)
            col_ok = cols < K
            x, sqk = _gemv_input(x_ptr, r_ptr, g_ptr, s_ptr, cols, col_ok, K, pid,
                                SILU_MUL, NORM, ADD)
            sq += sqk
            w = tl.load(w_ptr + rows[:, None] * stride_w + cols[None, :],
                        mask=row_ok[:, None] & col_ok[None, :], other=0.0,
                        eviction_policy="evict_first")
            acc += w.to(tl.float32) * x[None, :]
        y = tl.sum(acc, axis=1) + y_pre
        if NORM:
            y = y * tl.rsqrt((tl.sum(sq, axis=0) + sq_pre) / K + eps)
        tl.store(y_ptr + rows, y.to(y_ptr.dtype.element_ty), mask=row_ok)

    return gemv


_load_kernel = LazyKernel(_define)  # () -> (triton, kernel) | None


def prefetch_width(config: tuple[int, int, int], k: int) -> int:
    """Weight columns a program loads up front under PDL: as many as ~4096 elements per warp
    of registers hold (a power of two, at least one BLOCK_K step, at most K rounded up)."""
    block_n, block_k, warps = config
    width = block_k
    while width * 2 * block_n <= 4096 * warps and width < k:
        width *= 2
    return width


def _launch(x: torch.Tensor, weight: torch.Tensor, config: tuple[int, int, int], *,
            silu_mul: bool = False, norm_weight: torch.Tensor | None = None, eps: float = 0.0,
            residual: torch.Tensor | None = None, pdl: bool = False, prefetch: bool = False
            ) -> tuple[torch.Tensor, torch.Tensor | None]:
    loaded = _load_kernel()
    if loaded is None:
        raise RuntimeError("the Triton GEMV needs the triton package")
    triton, kernel = loaded
    n, k = weight.shape
    if x.shape != (1, 2 * k if silu_mul else k):
        raise ValueError(f"GEMV input of shape {tuple(x.shape)} for a weight of {k} columns"
                         + (" (silu_mul: gate and up, twice that)" if silu_mul else ""))
    if residual is not None and (residual.shape != x.shape or residual.dtype != x.dtype):
        raise ValueError(f"residual {tuple(residual.shape)} {residual.dtype} for an input "
                         f"{tuple(x.shape)} {x.dtype}")
    block_n, block_k, warps = config
    pdl = pdl and pdl_enabled
    pre = prefetch_width(config, k) if pdl or prefetch else 0
    x = x.contiguous()
    y = torch.empty((1, n), dtype=x.dtype, device=x.device)
    summed = torch.empty_like(x) if residual is not None else None
    # Unused pointer arguments get x: the kernel reads them only under their flags.
    kernel[(triton.cdiv(n, block_n),)](
        x, weight, y, residual.contiguous() if residual is not None else x,
        norm_weight if norm_weight is not None else x, summed if summed is not None else x,
        n, k, weight.stride(0), eps, BLOCK_N=block_n, BLOCK_K=block_k, SILU_MUL=silu_mul,
        NORM=norm_weight is not None, ADD=residual is not None, PRE_K=pre, PDL=pdl,
        num_warps=warps, **({"launch_pdl": True} if pdl else {}))
    return y, summed


def gemv(x: torch.Tensor, weight: torch.Tensor, config: tuple[int, int, int],
         silu_mul: bool = False, pdl: bool = False) -> torch.Tensor:
    """x [1, K] @ weight[N, K]^T -> [1, N] (fp32 accumulation), one program per BLOCK_N rows.
    silu_mul: x is [1, 2K], gate then up, and the product is silu(gate) * up @ weight^T.
    pdl: launched as a programmatic dependent (its weights load while the kernel before
    finishes; CUDA, SM90+: pdl_supported)."""
    return _launch(x, weight, config, silu_mul=silu_mul, pdl=pdl)[0]


def gemv_rms_norm(x: torch.Tensor, residual: torch.Tensor | None, norm_weight: torch.Tensor,
                  eps: float, weight: torch.Tensor, config: tuple[int, int, int],
                  pdl: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(rms_norm(residual + x) * norm_weight @ weight^T, residual + x) for one token; without
    a residual, (rms_norm(x) * norm_weight @ weight^T, x). Neither input is changed."""
    y, summed = _launch(x, weight, config, norm_weight=norm_weight, eps=eps, residual=residual,
                        pdl=pdl)
    return y, summed if summed is not None else x


def warm_up(device: torch.device, k: int = 4096) -> str:
    """Compile every config and prologue (plain and, where supported, with PDL) at one
    input width, so install's timings and graph captures find them built. Says what it did."""
    if _load_kernel() is None:
        return "no triton"
    x = torch.randn(1, k, device=device, dtype=torch.bfloat16)
    w = torch.randn(k, k, device=device, dtype=torch.bfloat16)

    def compile_all(pdl: bool) -> None:
        for cfg in CONFIGS:
            gemv(x, w, cfg, pdl=pdl)
            gemv(x.repeat(1, 2), w, cfg, silu_mul=True, pdl=pdl)
            for r in (None, x):
                gemv_rms_norm(x, r, w[0], 1e-5, w, cfg, pdl=pdl)

    compile_all(False)
    said = f"{len(CONFIGS)} configs x 4 prologues"
    if pdl_supported(device):
        try:
            compile_all(True)
            said += ", plain and with PDL"
        except Exception as e:  # PDL is an extra: say why it is missing
            said += f", PDL failed: {type(e).__name__}: {e}"
    else:
        said += ", no PDL here"
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return said


PROLOGUES = ("silu_mul", "rms_norm")


class GemvLinear(nn.Module):
    """A bias-free nn.Linear whose one-token calls run the GEMV (same weight Parameter, same
    state-dict names). prologue: the op before it that its GEMV applies too, when the model
    calls it through down_from_gate_up ("silu_mul") or norm_linear ("rms_norm")."""

    def __init__(self, linear: nn.Linear, config: tuple[int, int, int],
                 prologue: str | None = None, pdl: bool = False) -> None:
        super().__init__()
        if prologue not in (None, *PROLOGUES):
            raise ValueError(f"unknown GEMV prologue {prologue!r}")
        self.weight = linear.weight
        self.config = config
        self.prologue = prologue
        self.pdl = pdl

    def one_token(self, x: torch.Tensor) -> bool:
        return enabled and x.dim() == 2 and x.shape[0] == 1 and x.dtype == self.weight.dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.one_token(x):
            return gemv(x, self.weight, self.config, pdl=self.pdl)
        return gemm_cuda.linear(self, x)  # F.linear, or a tuned cuBLASLt algorithm


def down_from_gate_up(down: nn.Module, gate_up: torch.Tensor) -> torch.Tensor:
    """An MLP's down projection of silu(gate) * up from the gate_up output [T, 2K], in one
    kernel where install chose that for this module."""
    if isinstance(down, GemvLinear) and down.prologue == "silu_mul" and down.one_token(gate_up):
        return gemv(gate_up, down.weight, down.config, silu_mul=True, pdl=down.pdl)
    return down(fused_cuda.silu_and_mul(gate_up))


def norm_linear(norm: nn.Module, linear: nn.Module, x: torch.Tensor,
                residual: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(linear(norm(residual + x)), residual + x), or (linear(norm(x)), x) without a residual:
    the residual stream's add, an RMSNorm (weight, eps) and the projection after it, in one
    kernel where install chose that for `linear`. As norm.add_forward, may update `x` and
    `residual` in place."""
    if (isinstance(linear, GemvLinear) and linear.prologue == "rms_norm" and linear.one_token(x)
            and (residual is None or residual.shape == x.shape)):
        return gemv_rms_norm(x, residual, norm.weight, norm.eps, linear.weight, linear.config,
                             pdl=linear.pdl)
    if residual is None:
        return linear(norm(x)), x
    h, residual = norm.add_forward(x, residual)
    return linear(h), residual


# A candidate: (block config, with the role's prologue fused, launched with PDL); BLAS is
# F.linear.
Candidate = tuple[tuple[int, int, int] | None, bool, bool]
BLAS: Candidate = (None, False, False)


def _prologue_of(members: list[gemm_cuda.Member],
                 prologues: dict[nn.Module, tuple[str, nn.Module | None]]
                 ) -> tuple[str, nn.Module | None] | tuple[None, None]:
    """The prologue every member of a role shares (the first member's norm), else none."""
    kinds = {prologues.get(m, (None, None))[0] for _, _, m in members}
    if len(kinds) != 1 or None in kinds:
        return None, None
    return prologues[members[0][2]]


# Seconds per call of fn, cycling through the weights (time_calls on CUDA).
Timer = Callable[[Callable[[torch.Tensor], torch.Tensor], list[torch.Tensor]], float]


@torch.inference_mode()
def install(model: nn.Module, device: torch.device, graphs: bool = True,
            min_gain: float = MIN_GAIN) -> dict[str, str]:
    """Swap the projections whose one-token GEMV beats F.linear by min_gain (see the module
    docstring), timed as the decode steps will run: replayed from CUDA graphs when `graphs`.
    The model's linear_prologues() says which op comes before which projection.
    Returns projection -> what it runs and why, for the log."""
    if device.type != "cuda" or os.environ.get(ENV, "1") == "0":
        return {}
    if _load_kernel() is None:
        return {"all": "F.linear (no triton)"}
    return choose(model, device, min_gain,
                  lambda fn, weights: time_calls(fn, cold_cycle(weights), graphs),
                  pdl=graphs and pdl_supported(device))


@torch.inference_mode()
def choose(model: nn.Module, device: torch.device, min_gain: float, timer: Timer,
           roles: set[str] | None = None, pdl: bool = False) -> dict[str, str]:
    """install's measurements and swaps with any timer (seconds per call of fn cycling
    through the weights) on any device: the tests drive it on a CPU under Triton's
    interpreter. roles: only these projections (None: all). pdl: time each config launched
    as a programmatic dependent too (timed in a graph, back to back, it overlaps the GEMV
    before it as in the model it overlaps the kernel before it)."""
    prologues = model.linear_prologues() if hasattr(model, "linear_prologues") else {}
    status: dict[str, str] = {}
    for role, members in gemm_cuda.projections(model).items():
        if roles is not None and role not in roles:
            continue
        weights = [m.weight for _, _, m in members]
        w0 = weights[0]
        if any(w.shape != w0.shape or w.dtype != w0.dtype for w in weights):
            status[role] = "F.linear (mixed shapes)"
            continue
        # The kernel's offsets are 32-bit and it reads rows as packed.
        if w0.numel() >= 2**31 or any(w.stride(1) != 1 for w in weights):
            status[role] = "F.linear (weights over 2^31 elements or rows not packed)"
            continue
        kind, norm = _prologue_of(members, prologues)
        k = w0.shape[1]
        # What the layer is handed, and the op before it: every candidate pays for that op,
        # fused or as its own kernel. The norm's add works in place, as in the model.
        x = torch.randn(1, 2 * k if kind == "silu_mul" else k, device=device, dtype=w0.dtype)
        r = torch.randn_like(x)
        start = (x.clone(), r.clone())

        def call(w: torch.Tensor, cand: Candidate, x: torch.Tensor = x, r: torch.Tensor = r,
                 kind: str | None = kind, norm: nn.Module | None = norm) -> torch.Tensor:
            cfg, fused, pdl = cand
            if kind == "silu_mul":
                if fused and cfg is not None:
                    return gemv(x, w, cfg, silu_mul=True, pdl=pdl)
                h = fused_cuda.silu_and_mul(x)
            elif kind == "rms_norm":
                assert norm is not None
                if fused and cfg is not None:
                    return gemv_rms_norm(x, r, norm.weight, norm.eps, w, cfg, pdl=pdl)[0]
                h = fused_cuda.add_rms_norm(x, r, norm.weight, norm.eps)[0]
            else:
                h = x
            return F.linear(h, w) if cfg is None else gemv(h, w, cfg, pdl=pdl)

        def fresh(x: torch.Tensor = x, r: torch.Tensor = r,
                  start: tuple[torch.Tensor, torch.Tensor] = start) -> None:
            x.copy_(start[0])
            r.copy_(start[1])

        cands: list[Candidate] = [
            (cfg, fused, with_pdl) for fused in ((False, True) if kind else (False,))
            for with_pdl in ((False, True) if pdl else (False,)) for cfg in CONFIGS]
        pdl_failed = ""
        try:
            fresh()
            ref = call(w0, BLAS).float()
            base = timer(lambda w: call(w, BLAS), weights)
            best: tuple[float, Candidate] | None = None
            for cand in cands:
                fresh()
                try:
                    got = call(w0, cand).float()
                    err = float((got - ref).norm() / ref.norm().clamp_min(1e-12))
                    if err > 1e-2:
                        raise RuntimeError(f"{describe(cand, kind)} disagrees with F.linear "
                                           f"(rel err {err:.1e})")
                    t = timer(lambda w, cand=cand: call(w, cand), weights)
                except Exception as e:
                    if not cand[2]:
                        raise
                    # PDL is an extra: a Triton or driver without it keeps the plain GEMV.
                    pdl_failed = f"; PDL failed: {type(e).__name__}: {e}"
                    continue
                if best is None or t < best[0]:
                    best = (t, cand)
            assert best is not None
            t, cand = best
            if kind == "rms_norm" and cand[1]:
                # The first layer's norm has no residual to add: its own specialisation,
                # compiled now rather than while a graph is being captured.
                assert cand[0] is not None and norm is not None
                gemv_rms_norm(x, None, norm.weight, norm.eps, w0, cand[0], pdl=cand[2])
            t, base = retime_winner(timer, weights, lambda w: call(w, BLAS),
                                    lambda w, cand=cand: call(w, cand), base)
        except Exception as e:  # a failed build or launch: keep cuBLAS
            status[role] = f"F.linear (GEMV failed: {type(e).__name__}: {e})"
            logger.warning("one-token GEMV for %s switched off: %s", role, e)
            continue
        shape = "x".join(map(str, w0.shape))
        if t < (1 - min_gain) * base:
            cfg, fused, with_pdl = cand
            assert cfg is not None
            for parent, name, module in members:
                setattr(parent, name, GemvLinear(module, cfg, kind if fused else None,
                                                 pdl=with_pdl))
            status[role] = (f"{describe(cand, kind)} {t * 1e6:.1f} us vs F.linear "
                            f"{base * 1e6:.1f} us ({shape}){pdl_failed}")
        else:
            status[role] = (f"F.linear {base * 1e6:.1f} us vs {describe(cand, kind)} "
                            f"{t * 1e6:.1f} us ({shape}){pdl_failed}")
    return status


def describe(cand: Candidate, kind: str | None) -> str:
    cfg, fused, pdl = cand
    if cfg is None:
        return "F.linear" + (f" after {kind}" if kind else "")
    return f"gemv{'+' + str(kind) if fused else ''}{' pdl' if pdl else ''} {cfg}"
