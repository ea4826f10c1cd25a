"""Building blocks shared by our decoder models."""

from __future__ import annotations

import math

import torch
from torch import nn

from radixrt.models import fused, fused_cuda
from radixrt.models.config import ModelConfig, ModelLoadError


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_cuda:
            return fused_cuda.rms_norm(x, self.weight, self.eps)
        if x.dim() == 2 and fused.usable(x, self.weight):
            return fused.rmsnorm(x, self.weight, self.eps)
        if x.dim() > 2 and fused.usable(x, self.weight):
            # Per-head norms (q/k norm) on a view of the qkv output: one copy to rows, then
            # the fused kernel, which sums each row in one order whatever the row count.
            return fused.rmsnorm(x.reshape(-1, x.shape[-1]), self.weight,
                                 self.eps).view(x.shape)
        return fused_cuda.torch_rms_norm(x, self.weight, self.eps)

    def add_forward(self, x: torch.Tensor, residual: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(norm(residual + x), residual + x): the residual add fused with the norm after it.
        May update `residual` (and, on CUDA, `x`) in place."""
        if x.is_cuda:
            return fused_cuda.add_rms_norm(x, residual, self.weight, self.eps)
        if x.dim() == 2 and fused.usable(x, residual, self.weight) and residual.is_contiguous():
            return fused.rmsnorm(x, self.weight, self.eps, residual), residual
        residual = residual + x
        return self.forward(residual), residual


def _rope_inv_freq(cfg: ModelConfig) -> torch.Tensor:
    dim = cfg.head_dim
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.float64, device="cpu") / dim))
    scaling = cfg.rope_scaling
    if not scaling:
        return inv_freq
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind == "default":
        return inv_freq
    if kind == "linear":
        return inv_freq / float(scaling["factor"])
    if kind == "llama3":
        factor = float(scaling["factor"])
        low = float(scaling.get("low_freq_factor", 1.0))
        high = float(scaling.get("high_freq_factor", 4.0))
        old_ctx = float(scaling["original_max_position_embeddings"])
        wavelen = 2 * math.pi / inv_freq
        low_wl, high_wl = old_ctx / low, old_ctx / high
        scaled = torch.where(wavelen > low_wl, inv_freq / factor, inv_freq)
        smooth = (old_ctx / wavelen - low) / (high - low)
        mid = (1 - smooth) * scaled / factor + smooth * scaled
        is_mid = (wavelen >= high_wl) & (wavelen <= low_wl)
        return torch.where(is_mid, mid, scaled)
    raise ModelLoadError(f"unsupported rope scaling type {kind!r}")


class RotaryEmbedding(nn.Module):
    """Neox-style rotary embedding (HF rotate_half layout) with a precomputed cos/sin table."""

    def __init__(self, cfg: ModelConfig, device: torch.device) -> None:
        super().__init__()
        inv_freq = _rope_inv_freq(cfg)
        t = torch.arange(cfg.max_position_embeddings, dtype=torch.float64, device="cpu")
        freqs = torch.outer(t, inv_freq)
        self.register_buffer("cos", freqs.cos().float().to(device), persistent=False)
        self.register_buffer("sin", freqs.sin().float().to(device), persistent=False)
        # FlashInfer's layout ([max_pos, D]: cos half, then sin half) for the fused CUDA op.
        self.cos_sin = (torch.cat([self.cos, self.sin], -1) if self.cos.is_cuda else None)

    def forward(
        self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotated (q, k); on CPU with the fused kernels, q and k are rotated in place."""
        if q.is_cuda:
            return fused_cuda.rope(positions, q, k, self.cos, self.sin, self.cos_sin)
        if fused.usable(q, k) and self.cos.device.type == "cpu":
            positions = positions.to(torch.int64).contiguous()
            fused.rope_(q, positions, self.cos, self.sin)
            fused.rope_(k, positions, self.cos, self.sin)
            return q, k
        return fused_cuda.torch_rope(positions, q, k, self.cos, self.sin)
