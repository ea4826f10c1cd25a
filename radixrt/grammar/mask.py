"""Applying packed token bitmasks to logits rows (the worker side)."""

from __future__ import annotations

import torch

_SHIFTS: dict[torch.device, torch.Tensor] = {}


def unpack_bitmask(bits: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """bool [k, vocab_size] from packed int32 [k, W] (bit t % 32 of word t // 32)."""
    shifts = _SHIFTS.get(bits.device)
    if shifts is None:
        shifts = _SHIFTS[bits.device] = torch.arange(32, dtype=torch.int32, device=bits.device)
    unpacked = (bits.unsqueeze(-1) >> shifts) & 1
    return unpacked.view(bits.shape[0], -1)[:, :vocab_size].bool()


def apply_bitmask(logits: torch.Tensor, rows: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """logits with the disallowed tokens of rows set to -inf (a copy: the model's logits may
    be an inference tensor or a CUDA graph's output buffer)."""
    allowed = unpack_bitmask(bits, logits.shape[1])
    out = logits.clone()
    out[rows] = logits[rows].masked_fill(~allowed, float("-inf"))
    return out
