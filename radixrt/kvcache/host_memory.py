"""Host (CPU) tensors backed by transparent huge pages where the kernel allows them.

Decode attention reads every request's KV pages, scattered over the pool, each step: with
4 KiB pages nearly every KV page visit is a TLB miss (the pool is far larger than the TLB's
reach), and the CPU attention kernel stalls on the page walks. Asking the kernel for 2 MiB
pages (madvise MADV_HUGEPAGE, before the memory is first touched) removes most of them:
measured 15-25 % off a decode step's attention over scattered pages (docs/benchmarks.md). Linux with THP in
"madvise" or "always" mode; elsewhere (or with RADIXRT_HUGE_PAGES=0) a plain allocation.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import mmap
import os
import sys

import torch

HUGE_PAGE = 2 << 20
_MADV_HUGEPAGE = 14


@functools.cache
def _madvise() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    if not sys.platform.startswith("linux") or os.environ.get("RADIXRT_HUGE_PAGES") == "0":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None
    fn = libc.madvise
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


def advise_huge_pages(t: torch.Tensor) -> bool:
    """Ask for huge pages under the 2 MiB-aligned interior of t's memory (call it before the
    memory is first written; pages already touched stay small). True if the advice was taken."""
    madvise = _madvise()
    if madvise is None or t.device.type != "cpu":
        return False
    start = t.data_ptr()
    end = start + t.numel() * t.element_size()
    lo = -(-start // HUGE_PAGE) * HUGE_PAGE
    hi = end // HUGE_PAGE * HUGE_PAGE
    return hi > lo and madvise(lo, hi - lo, _MADV_HUGEPAGE) == 0


def zeros_huge(numel: int, dtype: torch.dtype) -> torch.Tensor:
    """A zeroed 1-D CPU tensor on fresh memory advised to huge pages before it is touched.

    Fresh: its own anonymous mapping (memory the allocator hands back may have been touched
    already, and touched 4 KiB pages stay small), 2 MiB-aligned; the tensor keeps the mapping
    alive. Written once here so the pages are faulted in now, not during the first steps.
    """
    nbytes = numel * torch.empty((), dtype=dtype).element_size()
    if _madvise() is None or nbytes < HUGE_PAGE:
        return torch.zeros(numel, dtype=dtype)
    region = mmap.mmap(-1, nbytes + HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    raw = torch.frombuffer(region, dtype=torch.uint8)
    start = -raw.data_ptr() % HUGE_PAGE
    t = raw[start:start + nbytes].view(dtype)
    advise_huge_pages(t)
    return t.zero_()
