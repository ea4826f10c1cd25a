"""RoPE on q and k and the write of k and v into the KV pool, as one Triton kernel on CUDA.

Unfused, each layer of a step runs FlashInfer's RoPE kernel on q and k, then an index_copy_
of k and v into the pool: two launches whose only work is moving a few KB per token (on the
H200, ~50 us and ~70 us of a 5 ms batch-1 step over 32 layers, plus the gaps between graph
nodes). Here one program per token rotates its q heads in place and its k heads straight into
the token's pool slot, with the v heads beside them (a program per token rather than per
head: a 4 x 2048 prefill is 8192 programs, not 390k of a few hundred bytes each). The pool never holds an
unrotated k, and k itself is left as it was (attention reads the pool).

`check` runs it once against the unfused torch reference when a CUDA backend starts; the
backend uses it only if that passed (else it warns). RADIXRT_ROPE_KV=0, or `enabled = False`
(read per call, for the benchmark's A/B), keeps the two kernels.
"""

from __future__ import annotations

import logging
import os
from types import ModuleType
from typing import Any

import torch

from radixrt.triton_jit import LazyKernel, pdl_supported

ENV = "RADIXRT_ROPE_KV"
logger = logging.getLogger("radixrt")
enabled = True
pdl_enabled = True  # False: launched without PDL even where check_pdl passed (benchmark A/B)


def _define(triton: ModuleType, tl: ModuleType) -> Any:
    """The kernel (see LazyKernel)."""

    @triton.jit
    def rope_kv(q_ptr, k_ptr, v_ptr, kc_ptr, vc_ptr, pos_ptr, slot_ptr, cs_ptr,  # noqa: ANN001
                q_st, q_sh, k_st, k_sh, v_st, v_sh, c_slot, c_head, HQ, HK,  # noqa: ANN001
                BLOCK_HQ: tl.constexpr, BLOCK_HK: tl.constexpr, HALF: tl.constexpr,
                PDL: tl.constexpr):
        # One program per token, every head of it: [heads, HALF] tiles, first and second
        # halves of each head rotated against each other (neox).
        # PDL (launched as a programmatic dependent): the positions, slots and cos/sin rows
        # (the step's inputs and a constant table, not the kernel ahead's output) load before
        # waiting for that kernel; q, k, v and every store come after.
        t = tl.program_id(0)
        d = tl.arange(0, HALF)[None, :]
        pos = tl.load(pos_ptr + t).to(tl.int64)
        slot = tl.load(slot_ptr + t).to(tl.int64)
        cos = tl.load(cs_ptr + pos * (2 * HALF) + d)
        sin = tl.load(cs_ptr + pos * (2 * HALF) + HALF + d)
        if PDL:
            tl.extra.cuda.gdc_launch_dependents()
            tl.extra.cuda.gdc_wait()
        hq = tl.arange(0, BLOCK_HQ)[:, None]
        q_ok = hq < HQ
        q = q_ptr + t * q_st + hq * q_sh + d
        x1 = tl.load(q, mask=q_ok).to(tl.float32)
        x2 = tl.load(q + HALF, mask=q_ok).to(tl.float32)
        ty = q_ptr.dtype.element_ty
        tl.store(q, (x1 * cos - x2 * sin).to(ty, fp_downcast_rounding="rtne"), mask=q_ok)
        tl.store(q + HALF, (x2 * cos + x1 * sin).to(ty, fp_downcast_rounding="rtne"),
                 mask=q_ok)
        hk = tl.arange(0, BLOCK_HK)[:, None]
        k_ok = hk < HK
        k = k_ptr + t * k_st + hk * k_sh + d
        kc = kc_ptr + slot * c_slot + hk * c_head + d
        x1 = tl.load(k, mask=k_ok).to(tl.float32)
        x2 = tl.load(k + HALF, mask=k_ok).to(tl.float32)
        ty = kc_ptr.dtype.element_ty
        tl.store(kc, (x1 * cos - x2 * sin).to(ty, fp_downcast_rounding="rtne"), mask=k_ok)
        tl.store(kc + HALF, (x2 * cos + x1 * sin).to(ty, fp_downcast_rounding="rtne"),
                 mask=k_ok)
        v = v_ptr + t * v_st + hk * v_sh + d
        vc = vc_ptr + slot * c_slot + hk * c_head + d
        tl.store(vc, tl.load(v, mask=k_ok), mask=k_ok)
        tl.store(vc + HALF, tl.load(v + HALF, mask=k_ok), mask=k_ok)

    return rope_kv


_load_kernel = LazyKernel(_define)  # () -> (triton, kernel) | None


def usable(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor,
           cos_sin: torch.Tensor | None) -> bool:
    """Whether rope_and_write takes these: rows of packed heads (any row stride), one dtype
    with the cache, a power-of-two head_dim, a float32 cos/sin table."""
    d = q.shape[-1]
    return (enabled and cos_sin is not None and cos_sin.dtype == torch.float32
            and d >= 2 and d & (d - 1) == 0 and k.shape[-1] == d and v.shape == k.shape
            and q.dim() == 3 and k.dim() == 3 and k_cache.dim() == 3
            and q.stride(-1) == k.stride(-1) == v.stride(-1) == k_cache.stride(-1) == 1
            and q.dtype == k.dtype == v.dtype == k_cache.dtype)


def rope_and_write(positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
                   v: torch.Tensor, cos_sin: torch.Tensor, k_cache: torch.Tensor,
                   v_cache: torch.Tensor, slots: torch.Tensor, pdl: bool = False
                   ) -> torch.Tensor:
    """Rotate q [T, Hq, D] in place (neox halves, cos/sin rows cos_sin[positions]); rotate
    k [T, Hk, D] into k_cache[slots] and copy v into v_cache[slots] (caches [S, Hk, D], the
    same strides). Returns q. pdl: launched as a programmatic dependent (check_pdl)."""
    loaded = _load_kernel()
    if loaded is None:
        raise RuntimeError("the fused RoPE + KV write needs the triton package")
    triton, kernel = loaded
    t, hq, d = q.shape
    hk = k.shape[1]
    if t == 0:
        return q
    if k_cache.stride() != v_cache.stride():
        raise ValueError("the K and V caches must share strides")
    kernel[(t,)](q, k, v, k_cache, v_cache, positions, slots, cos_sin,
                 q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
                 k_cache.stride(0), k_cache.stride(1), hq, hk,
                 BLOCK_HQ=triton.next_power_of_2(hq), BLOCK_HK=triton.next_power_of_2(hk),
                 HALF=d // 2, PDL=pdl and pdl_enabled, num_warps=4,
                 **({"launch_pdl": True} if pdl and pdl_enabled else {}))
    return q


def reference(positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
              cos_sin: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
              slots: torch.Tensor) -> torch.Tensor:
    """What rope_and_write does, in torch ops (the unfused path's arithmetic)."""
    half = q.shape[-1] // 2
    cos = cos_sin[positions.long(), :half].unsqueeze(1)
    sin = cos_sin[positions.long(), half:].unsqueeze(1)

    def rotate(x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x.float().chunk(2, dim=-1)
        return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).to(x.dtype)

    q.copy_(rotate(q))
    k_cache.index_copy_(0, slots.long(), rotate(k).to(k_cache.dtype))
    v_cache.index_copy_(0, slots.long(), v.to(v_cache.dtype))
    return q


def check(device: torch.device, dtype: torch.dtype, num_heads: int, num_kv_heads: int,
          head_dim: int, tol: float = 2e-2) -> str:
    """Run the kernel once at the model's head shape against `reference`: "fused" when it
    agrees, else "off (why)"."""
    if device.type != "cuda" or os.environ.get(ENV, "1") == "0":
        return "off (not CUDA)" if device.type != "cuda" else f"off ({ENV}=0)"
    if _load_kernel() is None:
        return "off (no triton)"
    if head_dim & (head_dim - 1):
        return "off (head_dim not a power of two)"
    why = compare(device, dtype, num_heads, num_kv_heads, head_dim, tol)
    if why:
        logger.warning("fused RoPE + KV write switched off: %s", why)
        return f"off ({why})"
    return "fused"


def check_pdl(device: torch.device, dtype: torch.dtype, num_heads: int, num_kv_heads: int,
              head_dim: int) -> bool:
    """Whether the kernel, launched with PDL, agrees with `reference` here (SM90+ with a Triton
    that has it); a failure only costs the PDL launch."""
    if not pdl_supported(device):
        return False
    why = compare(device, dtype, num_heads, num_kv_heads, head_dim, pdl=True)
    if why:
        logger.warning("fused RoPE + KV write without PDL: %s", why)
    return not why


def compare(device: torch.device, dtype: torch.dtype, num_heads: int, num_kv_heads: int,
            head_dim: int, tol: float = 2e-2, pdl: bool = False) -> str:
    """check's comparison on any device (the tests run it on a CPU under Triton's
    interpreter): "" when the kernel agrees with `reference`, else why not."""
    try:
        g = torch.Generator(device=device).manual_seed(0)
        t, hq, hk, d = 5, num_heads, num_kv_heads, head_dim
        qkv = torch.randn(t, (hq + 2 * hk) * d, generator=g, device=device).to(dtype)
        q = qkv[:, : hq * d].view(t, hq, d)  # views into one row, as the model passes them
        k = qkv[:, hq * d: (hq + hk) * d].view(t, hk, d)
        v = qkv[:, (hq + hk) * d:].view(t, hk, d)
        pos = torch.tensor([0, 3, 17, 1000, 4], device=device)
        inv = 1.0 / (10000.0 ** (torch.arange(0, d, 2, device=device).float() / d))
        freqs = torch.outer(torch.arange(1024, device=device).float(), inv)
        cos_sin = torch.cat([freqs.cos(), freqs.sin()], -1)
        slots = torch.tensor([9, 2, 30, 0, 17], device=device)
        caches = [torch.zeros(2, 32, hk, d, device=device, dtype=dtype) for _ in range(2)]
        ref_q = reference(pos, q.clone(), k, v, cos_sin, caches[0][0], caches[0][1], slots)
        kept = qkv[:, hq * d:].clone()
        got_q = rope_and_write(pos, q, k, v, cos_sin, caches[1][0], caches[1][1], slots,
                               pdl=pdl)
        err = max(_rel_err(got_q, ref_q), _rel_err(caches[1], caches[0]))
        if err >= tol:
            return f"rel err {err:.1e}"
        return "" if torch.equal(qkv[:, hq * d:], kept) else "k or v changed"
    except Exception as e:  # a failed build or launch: keep the two kernels
        return f"{type(e).__name__}: {e}"


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.float(), b.float()
    return float((a - b).norm() / b.norm().clamp_min(1e-12))
