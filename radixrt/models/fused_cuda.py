"""Fused elementwise ops: FlashInfer's kernels on CUDA, the torch versions everywhere else.

Not wired into the decoder yet: main's radixrt/models/fused.py (CPU native fused layers, a
residual-handing decoder layer) landed in parallel; these kernels become its CUDA branch.

RMSNorm, residual add + RMSNorm, SiLU-and-mul and RoPE from a cos/sin cache run as one
FlashInfer kernel each when the tensor is on a CUDA device and flashinfer imports (and
RADIXRT_FUSED_OPS is not 0); otherwise the torch code below, which is the reference the GPU
tests (tests/gpu/test_fused_ops.py) compare the kernels with. scripts/gpu_check.sh times each
one against its torch version (bench/gpu_bench.py, section fused_ops).
"""

from __future__ import annotations

import os
from types import ModuleType

import torch
from torch.nn import functional as F

ENV = "RADIXRT_FUSED_OPS"
_cache: dict[str, ModuleType | None] = {}


def flashinfer_for(device: torch.device) -> ModuleType | None:
    """The flashinfer module when fused kernels apply on `device`, else None."""
    if device.type != "cuda" or os.environ.get(ENV, "1") == "0":
        return None
    if "fi" not in _cache:
        try:
            import flashinfer
        except ImportError:
            flashinfer = None
        _cache["fi"] = flashinfer
    return _cache["fi"]


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    fi = flashinfer_for(x.device)
    if fi is not None and x.dim() == 2:
        return fi.norm.rmsnorm(x.contiguous(), weight, eps)
    # Normalise in float32 as Hugging Face does, so low-precision runs stay faithful.
    dtype = x.dtype
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(dtype)


def add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """(rms_norm(residual + x), residual + x): the residual stream's add and the next norm."""
    fi = flashinfer_for(x.device)
    if fi is not None and x.dim() == 2 and x.is_contiguous() and residual.is_contiguous():
        fi.norm.fused_add_rmsnorm(x, residual, weight, eps)  # in place: residual, then x
        return x, residual
    residual = residual + x
    return rms_norm(residual, weight, eps), residual


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """silu(x[..., :d]) * x[..., d:] for x [..., 2d]."""
    fi = flashinfer_for(x.device)
    if fi is not None:
        return fi.activation.silu_and_mul(x.contiguous())
    gate, up = x.chunk(2, dim=-1)
    return F.silu(gate) * up


def rope(positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor,
         sin: torch.Tensor, cos_sin: torch.Tensor | None = None
         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Neox-style (rotate-half) rotary embedding of q [T, Hq, D] and k [T, Hk, D]; cos/sin
    [max_pos, D/2] float32, cos_sin their concatenation (FlashInfer's cache layout)."""
    fi = flashinfer_for(q.device)
    if fi is not None and cos_sin is not None:
        t, d = q.shape[0], q.shape[-1]
        q2, k2 = q.reshape(t, -1).contiguous(), k.reshape(t, -1).contiguous()
        fi.rope.apply_rope_with_cos_sin_cache_inplace(positions, q2, k2, d, cos_sin,
                                                      is_neox=True)
        return q2.view(q.shape), k2.view(k.shape)
    c = cos[positions].unsqueeze(1)  # [T, 1, D/2]
    s = sin[positions].unsqueeze(1)
    return _rotate(q, c, s), _rotate(k, c, s)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    dtype = x.dtype
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).to(dtype)
