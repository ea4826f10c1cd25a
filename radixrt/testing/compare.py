"""How close two tensors are, as the kernel tests measure it."""

from __future__ import annotations

import torch


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b||, in float32 whatever the tensors' dtype."""
    a, b = a.detach().float(), b.detach().float()
    return float((a - b).norm() / b.norm())
