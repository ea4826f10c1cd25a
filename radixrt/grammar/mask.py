"""Applying packed token bitmasks to logits rows (the worker side)."""

from __future__ import annotations

import numpy as np
import torch

_SHIFTS: dict[torch.device, torch.Tensor] = {}


def unpack_bitmask(bits: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """bool [k, vocab_size] from packed int32 [k, W] (bit t % 32 of word t // 32)."""
    if bits.device.type == "cpu":  # numpy's unpackbits is several times faster on a CPU
        raw = bits.contiguous().numpy().view(np.uint8)  # little-endian: bit t of word w
        return torch.from_numpy(np.unpackbits(raw, axis=1, count=vocab_size,
                                              bitorder="little").view(np.bool_))
    shifts = _SHIFTS.get(bits.device)
    if shifts is None:
        shifts = _SHIFTS[bits.device] = torch.arange(32, dtype=torch.int32, device=bits.device)
    unpacked = (bits.unsqueeze(-1) >> shifts) & 1
    return unpacked.view(bits.shape[0], -1)[:, :vocab_size].bool()


def apply_bitmask(logits: torch.Tensor, rows: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """logits with the disallowed tokens of rows set to -inf (a copy: the model's logits may
    be an inference tensor or a CUDA graph's output buffer)."""
    barred = unpack_bitmask(bits, logits.shape[1]).logical_not_()
    if len(rows) == logits.shape[0]:  # rows are distinct: every row is constrained
        return logits.masked_fill(barred, float("-inf"))
    out = logits.clone()
    out.index_copy_(0, rows, logits.index_select(0, rows).masked_fill_(barred, float("-inf")))
    return out
