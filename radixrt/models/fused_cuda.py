"""Fused elementwise ops on CUDA: FlashInfer's kernels, the torch versions everywhere else.

RMSNorm, residual add + RMSNorm, SiLU-and-mul and RoPE from a cos/sin cache run as one
FlashInfer kernel each when the tensor is on a CUDA device, flashinfer imports and
RADIXRT_FUSED_OPS is not 0. Why: a decode step is hundreds of kernels, and the torch versions
take ~10 small kernels per op (float casts, pow, mean, rsqrt, cat, ...), each a few
microseconds even inside a CUDA graph. The torch code below is the reference the kernels are
checked against: by `verify` when a CUDA model runner starts (an op that fails or disagrees is
switched off, with a warning, so a broken JIT build cannot take the server down) and by
tests/gpu/test_fused_ops.py. bench/gpu_bench.py times each op and the decode step both ways.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from types import ModuleType

import torch
from torch.nn import functional as F

ENV = "RADIXRT_FUSED_OPS"
# rope_strided: the RoPE kernel run in place on q and k as views of the qkv projection's
# output (row stride q + 2 kv), which saves two copies a layer; checked on its own, so a
# failure falls back to contiguous copies, not to torch.
OPS = ("rms_norm", "add_rms_norm", "silu_and_mul", "rope", "rope_strided")
logger = logging.getLogger("radixrt")
_cache: dict[str, ModuleType | None] = {}
_off: set[str] = set()  # ops whose kernel failed verify(): torch from then on


def flashinfer_for(device: torch.device, op: str | None = None) -> ModuleType | None:
    """The flashinfer module when fused kernels (op's, if named) apply on `device`, else None."""
    if device.type != "cuda" or os.environ.get(ENV, "1") == "0" or op in _off:
        return None
    if "fi" not in _cache:
        try:
            import flashinfer
        except ImportError:
            flashinfer = None
        _cache["fi"] = flashinfer
    return _cache["fi"]


def active_ops(device: torch.device) -> list[str]:
    """The ops that run FlashInfer's kernel on `device` now."""
    return [op for op in OPS if flashinfer_for(device, op) is not None]


# -- the torch references


def torch_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    # Normalise in float32 as Hugging Face does, so low-precision runs stay faithful.
    dtype = x.dtype
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(dtype)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    dtype = x.dtype
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).to(dtype)


def torch_rope(positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor,
               sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    c = cos[positions].unsqueeze(1)  # [T, 1, D/2]
    s = sin[positions].unsqueeze(1)
    return _rotate(q, c, s), _rotate(k, c, s)


# -- the ops


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """weight * x / rms(x) over the last dim; x [T, D] or [T, heads, D]."""
    fi = flashinfer_for(x.device, "rms_norm")
    if fi is not None and x.dim() in (2, 3):  # per-head norms (qk_norm) as rows of one matrix
        return fi.norm.rmsnorm(x.reshape(-1, x.shape[-1]).contiguous(), weight, eps
                               ).view(x.shape)
    return torch_rms_norm(x, weight, eps)


def add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """(rms_norm(residual + x), residual + x): the residual stream's add and the next norm.
    With the kernel, both happen in place (x becomes the norm, residual the sum)."""
    fi = flashinfer_for(x.device, "add_rms_norm")
    if fi is not None and x.dim() == 2 and x.is_contiguous() and residual.is_contiguous():
        fi.norm.fused_add_rmsnorm(x, residual, weight, eps)  # in place: residual, then x
        return x, residual
    residual = residual + x
    return torch_rms_norm(residual, weight, eps), residual


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """silu(x[..., :d]) * x[..., d:] for x [..., 2d]."""
    fi = flashinfer_for(x.device, "silu_and_mul")
    if fi is not None:
        return fi.activation.silu_and_mul(x.contiguous())
    gate, up = x.chunk(2, dim=-1)
    return F.silu(gate) * up


def rope(positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor,
         sin: torch.Tensor, cos_sin: torch.Tensor | None = None
         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Neox-style (rotate-half) rotary embedding of q [T, Hq, D] and k [T, Hk, D]; cos/sin
    [max_pos, D/2] float32, cos_sin their concatenation (FlashInfer's cache layout). With the
    kernel, q and k are rotated in place, also as views into the qkv projection's output
    (the kernel takes row strides); with rope_strided off, such views are copied first."""
    fi = flashinfer_for(q.device, "rope")
    if fi is not None and cos_sin is not None:
        t, d = q.shape[0], q.shape[-1]
        q2, k2 = q.reshape(t, -1), k.reshape(t, -1)  # views when heads are packed in a row
        if (flashinfer_for(q.device, "rope_strided") is None or q2.stride(-1) != 1
                or k2.stride(-1) != 1):
            q2, k2 = q2.contiguous(), k2.contiguous()
        fi.rope.apply_rope_with_cos_sin_cache_inplace(positions, q2, k2, d, cos_sin,
                                                      is_neox=True)
        return q2.view(q.shape), k2.view(k.shape)
    return torch_rope(positions, q, k, cos, sin)


# -- start-up check


def rope_on_qkv_views(positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
                      cos: torch.Tensor, sin: torch.Tensor, cos_sin: torch.Tensor
                      ) -> torch.Tensor:
    """rope() as the model calls it: q and k views into one [T, q + k + v] projection output
    (v: a copy of k). Returns the rotated q | k as [T, q + k]; checks that v was left alone."""
    t = q.shape[0]
    qs, ks = q.reshape(t, -1), k.reshape(t, -1)
    qkv = torch.cat([qs, ks, ks], -1)
    qv = qkv[:, : qs.shape[1]].view(q.shape)
    kv = qkv[:, qs.shape[1] : qs.shape[1] + ks.shape[1]].view(k.shape)
    rq, rk = rope(positions, qv, kv, cos, sin, cos_sin)
    if not torch.equal(qkv[:, qs.shape[1] + ks.shape[1]:], ks):
        raise RuntimeError("the in-place RoPE wrote outside q and k")
    return torch.cat([rq.reshape(t, -1), rk.reshape(t, -1)], -1)


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.float(), b.float()
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


def verify(device: torch.device, dtype: torch.dtype, hidden: int, head_dim: int,
           num_heads: int, num_kv_heads: int, intermediate: int, tol: float = 2e-2
           ) -> dict[str, str]:
    """Run each op's kernel once at the model's shapes against its torch reference; switch
    off (for this process) any that raises or disagrees beyond `tol` (relative L2, bf16
    rounding is ~4e-3). Returns op -> "fused" or "torch (why)"."""
    if flashinfer_for(device) is None:
        return {op: "torch (no kernels on this device)" for op in OPS}
    g = torch.Generator(device=device).manual_seed(0)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g, device=device, dtype=torch.float32).to(dtype)

    t = 7
    x, r = randn(t, hidden), randn(t, hidden)
    w = randn(hidden) * 0.1 + 1
    gu = randn(t, 2 * intermediate)
    q, k = randn(t, num_heads, head_dim), randn(t, num_kv_heads, head_dim)
    pos = torch.tensor([0, 1, 5, 17, 100, 1000, 3], device=device)
    inv = 1.0 / (10000.0 ** (torch.arange(0, head_dim, 2, device=device).float() / head_dim))
    freqs = torch.outer(torch.arange(1024, device=device).float(), inv)
    cos, sin = freqs.cos(), freqs.sin()
    cos_sin = torch.cat([cos, sin], -1)

    def add_norm_pair(fn: Callable) -> torch.Tensor:
        out, res = fn(x.clone(), r.clone(), w, 1e-5)
        return torch.cat([out, res], -1)

    gate, up = gu.float().chunk(2, -1)
    checks: dict[str, tuple[Callable[[], torch.Tensor], torch.Tensor]] = {
        "rms_norm": (lambda: rms_norm(x, w, 1e-5), torch_rms_norm(x, w, 1e-5)),
        "add_rms_norm": (lambda: add_norm_pair(add_rms_norm),
                         torch.cat([torch_rms_norm(x + r, w, 1e-5), x + r], -1)),
        "silu_and_mul": (lambda: silu_and_mul(gu), (F.silu(gate) * up).to(dtype)),
        "rope": (lambda: torch.cat([z.reshape(t, -1) for z in
                                    rope(pos, q.clone(), k.clone(), cos, sin, cos_sin)], -1),
                 torch.cat([z.reshape(t, -1) for z in torch_rope(pos, q, k, cos, sin)], -1)),
        "rope_strided": (lambda: rope_on_qkv_views(pos, q, k, cos, sin, cos_sin),
                         torch.cat([z.reshape(t, -1) for z in torch_rope(pos, q, k, cos, sin)],
                                   -1)),
    }
    status = {}
    for op, (run, ref) in checks.items():
        if op == "rope_strided" and "rope" in _off:
            _off.add(op)
            status[op] = "torch (the rope kernel is off)"
            continue
        try:
            err = _rel_err(run(), ref)
            torch.cuda.synchronize(device)
            ok, why = err < tol, f"rel err {err:.2e}"
        except Exception as e:  # a failed JIT build or launch: keep serving with torch
            ok, why = False, f"{type(e).__name__}: {e}"
        if ok:
            status[op] = "fused"
        else:
            _off.add(op)
            status[op] = f"torch ({why})"
            logger.warning("fused %s kernel switched off: %s", op, why)
    return status
