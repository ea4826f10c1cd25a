"""--deterministic's linears: each output row computed the same way whatever rows share the
call, so a request's logits do not depend on the batch the scheduler put it in.

Quantized weights have their one-order kernel in radixrt._quant_cpu (quant.set_batch_invariant).
Float32 and bfloat16 weights take radixrt._dense_cpu (csrc/dense_cpu.cpp): torch's BLAS
chooses its kernel and its split of K by the shape of the call, so a row computed alone and
the same row among 40 others round differently there. The rest of the CPU forward (fused
norms and RoPE, SiLU, the cpu attention backend's invariant plan, sampling) works row by row
already.
"""

from __future__ import annotations

import functools
from types import ModuleType

import torch
from torch import nn

from radixrt.models import quant

_DTYPES = (torch.float32, torch.bfloat16)


@functools.cache
def native() -> ModuleType | None:
    """radixrt._dense_cpu, imported after torch (it shares torch's libgomp), or None."""
    try:
        from radixrt import _dense_cpu
    except ImportError:
        return None
    return _dense_cpu


def _ext() -> ModuleType:
    ext = native()
    if ext is None:
        raise RuntimeError("--deterministic on float weights needs the native extension "
                           "radixrt._dense_cpu: build it with `pip install -e .` or "
                           "`python setup.py build_ext --inplace`")
    return ext


def matmul(x: torch.Tensor, weight: torch.Tensor, portable: bool = False) -> torch.Tensor:
    """y [M, N] float32 = x [M, K] @ weight [N, K]^T, both float32 or both bfloat16 on the
    CPU, accumulated in float32 in one order per output (portable: the scalar loops, which
    give the AVX2 kernel's bits)."""
    if (x.dim() != 2 or weight.dim() != 2 or x.shape[1] != weight.shape[1]
            or x.dtype not in _DTYPES or weight.dtype is not x.dtype
            or x.device.type != "cpu" or weight.device.type != "cpu"):
        raise ValueError(f"matmul: x [M, K] and weight [N, K], both float32 or both bfloat16 "
                         f"on the CPU; got {x.dtype} {tuple(x.shape)} on {x.device}, "
                         f"{weight.dtype} {tuple(weight.shape)} on {weight.device}")
    x, weight = x.contiguous(), weight.contiguous()
    (rows, k), n = x.shape, weight.shape[0]
    y = torch.empty(rows, n, dtype=torch.float32)
    _ext().matmul(x.data_ptr(), rows, k, weight.data_ptr(), n, y.data_ptr(),
                  x.dtype is torch.bfloat16, torch.get_num_threads(), portable)
    return y


class InvariantLinear(nn.Module):
    """An nn.Linear's weight and bias through the one-order kernel; the output rounds once
    to the input's dtype, as torch's linear does."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = linear.weight  # the same Parameter: a tied lm_head stays tied
        self.bias = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        y = matmul(x.reshape(-1, self.in_features), self.weight)
        if self.bias is not None:
            y += self.bias.float()
        return y.to(x.dtype).reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, batch-invariant")


def make_batch_invariant(model: nn.Module) -> int:
    """Route every linear of `model` through a batch-invariant kernel: QuantizedLinear's
    one-order path, and each float nn.Linear replaced by an InvariantLinear (same
    parameters, no copy). Returns how many linears that is."""
    count = quant.set_batch_invariant(model)
    for name, module in list(model.named_modules()):
        if type(module) is not nn.Linear:
            continue
        if module.weight.dtype not in _DTYPES or module.weight.device.type != "cpu":
            raise ValueError(f"{name}: no batch-invariant kernel for {module.weight.dtype} "
                             f"weights on {module.weight.device}")
        _ext()
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child,
                InvariantLinear(module))
        count += 1
    return count
