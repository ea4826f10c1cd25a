"""The decoder's fused CPU layers (radixrt._layers_cpu): RMSNorm with the residual add, RoPE in
place. One native call each instead of ~10 torch ops (what a decode step spends most of its
non-matmul time on). Used for CPU float32/bfloat16 tensors when the extension is built; the
torch code in layers.py is the reference and the path everywhere else."""

from __future__ import annotations

import functools
import os
from types import ModuleType

import torch

_DTYPES = (torch.float32, torch.bfloat16)
# RADIXRT_FUSED_LAYERS=0 runs the torch reference ops instead (A/B benchmarks, debugging).
enabled = os.environ.get("RADIXRT_FUSED_LAYERS", "1") != "0"


@functools.cache
def native() -> ModuleType | None:
    # Imported after torch: its OpenMP binds to torch's libgomp (same soname, one pool).
    try:
        from radixrt import _layers_cpu
    except ImportError:
        return None
    return _layers_cpu


def usable(*tensors: torch.Tensor) -> bool:
    """True when the fused kernels can take these tensors: CPU, one float dtype they support,
    rows with unit stride in the last dim."""
    if not enabled or native() is None:
        return False
    dtype = tensors[0].dtype
    if dtype not in _DTYPES:
        return False
    for t in tensors:  # a plain loop: this runs ~300 times a decode step
        if t.dtype is not dtype or t.device.type != "cpu" or t.stride(-1) != 1:
            return False
    return True


def rmsnorm(x: torch.Tensor, weight: torch.Tensor, eps: float,
            residual: torch.Tensor | None = None) -> torch.Tensor:
    """weight * norm(x) for 2-D rows; with `residual`, residual <- residual + x (in place)
    first and the sum is normalised. Callers check usable() first."""
    ext = native()
    assert ext is not None
    rows, dim = x.shape
    out = torch.empty((rows, dim), dtype=x.dtype)
    res_ptr, res_stride = 0, 0
    if residual is not None:
        if residual.shape != x.shape:
            raise ValueError(f"residual {tuple(residual.shape)} vs x {tuple(x.shape)}")
        res_ptr, res_stride = residual.data_ptr(), residual.stride(0)
    ext.rmsnorm(x.data_ptr(), x.stride(0), res_ptr, res_stride, weight.data_ptr(),
                out.data_ptr(), dim, rows, dim, eps, x.dtype == torch.bfloat16)
    return out


def rope_(x: torch.Tensor, positions: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
          ) -> None:
    """Rotate x [T, heads, head_dim] (heads packed: stride(1) == head_dim) in place."""
    ext = native()
    assert ext is not None
    t, heads, head_dim = x.shape
    if x.stride(1) != head_dim or positions.dtype != torch.int64 or not positions.is_contiguous():
        raise ValueError("rope_: heads must be packed and positions contiguous int64")
    ext.rope(x.data_ptr(), x.stride(0), heads, head_dim, positions.data_ptr(), cos.data_ptr(),
             sin.data_ptr(), t, x.dtype == torch.bfloat16)
