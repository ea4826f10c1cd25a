"""Triton kernels defined on first use, so radixrt imports (and runs on CPU) without triton."""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any

import torch


class LazyKernel:
    """Calling it returns (triton, kernel), the kernel built by `define(triton, tl)` the first
    time (Triton's interpreter, TRITON_INTERPRET=1, applies as of that moment); None when
    triton is not installed."""

    def __init__(self, define: Callable[[ModuleType, ModuleType], Any]) -> None:
        self.define = define
        self.loaded: tuple[ModuleType, Any] | None = None

    def __call__(self) -> tuple[ModuleType, Any] | None:
        if self.loaded is None:
            try:
                import triton
                import triton.language as tl
            except ImportError:
                return None
            self.loaded = (triton, self.define(triton, tl))
        return self.loaded


def pdl_supported(device: torch.device) -> bool:
    """Programmatic dependent launch: Hopper or newer, and a Triton that exposes it."""
    if (device.type != "cuda" or not torch.cuda.is_available()
            or torch.cuda.get_device_capability(device)[0] < 9):
        return False
    try:
        from triton.language.extra import cuda as tl_cuda
    except ImportError:
        return False
    return hasattr(tl_cuda, "gdc_wait") and hasattr(tl_cuda, "gdc_launch_dependents")
