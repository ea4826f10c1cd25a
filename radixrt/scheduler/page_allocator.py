"""Which KV pages are free. Indices only; the tensors live in the workers."""

from __future__ import annotations

import numpy as np


class OutOfPages(RuntimeError):
    """The allocator has fewer free pages than asked for."""


class PageAllocator:
    """A stack of free KV page ids (the scheduler's half of the KV pool)."""

    def __init__(self, num_pages: int) -> None:
        self.num_pages = num_pages
        self._free = np.arange(num_pages, dtype=np.int32)
        self._num_free = num_pages

    @property
    def num_free(self) -> int:
        return self._num_free

    def alloc(self, n: int) -> np.ndarray:
        if n > self._num_free:
            raise OutOfPages(f"asked for {n} pages, {self._num_free} free")
        out = self._free[self._num_free - n : self._num_free].copy()
        self._num_free -= n
        return out

    def free(self, pages: np.ndarray) -> None:
        n = len(pages)
        if n == 0:
            return
        if self._num_free + n > self.num_pages:
            raise AssertionError("double free of KV pages")
        self._free[self._num_free : self._num_free + n] = pages
        self._num_free += n

    def reset(self) -> None:
        self._free = np.arange(self.num_pages, dtype=np.int32)
        self._num_free = self.num_pages

    def free_set(self) -> set[int]:
        """For integrity checks in tests."""
        return set(self._free[: self._num_free].tolist())
