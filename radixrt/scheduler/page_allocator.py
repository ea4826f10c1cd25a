"""Which KV pages are free. Indices only; the tensors live in the workers."""

from __future__ import annotations

import numpy as np


class OutOfPages(RuntimeError):
    """The allocator has fewer free pages than asked for."""


class PageAllocator:
    """Free KV page ids, handed out as runs of consecutive pages where it can.

    Attention reads a request's pages in order, and on the cpu backend's head-major pool a
    request's consecutive pages are consecutive memory per KV head, which streams about twice
    as fast as pages scattered over the pool (docs/benchmarks.md, "CPU: contiguous KV pages").
    So a request grows into the pages right after its last one while those are free, and a
    run for a new request (or one whose next pages are taken) is cut from the middle of the
    largest free run, leaving room behind the request before it to grow into.
    """

    def __init__(self, num_pages: int) -> None:
        self.num_pages = num_pages
        self._is_free = np.ones(num_pages, bool)
        self._num_free = num_pages

    @property
    def num_free(self) -> int:
        return self._num_free

    def alloc(self, n: int, after: int | None = None) -> np.ndarray:
        """n free pages, consecutive where possible; `after` is the page they should follow
        (the last page of the request they extend)."""
        if n > self._num_free:
            raise OutOfPages(f"asked for {n} pages, {self._num_free} free")
        if n <= 0:
            return np.zeros(0, np.int32)
        if after is not None and after + 1 + n <= self.num_pages \
                and self._is_free[after + 1 : after + 1 + n].all():
            return self._take(np.arange(after + 1, after + 1 + n, dtype=np.int32))
        starts, lengths = self._free_runs()
        best = int(np.argmax(lengths))
        start, length = int(starts[best]), int(lengths[best])
        if length >= n:
            # A run at the pool's start has no request before it to leave room for.
            offset = 0 if start == 0 else (length - n) // 2
            return self._take(np.arange(start + offset, start + offset + n, dtype=np.int32))
        # No run is long enough: the longest runs first, each whole.
        order = np.argsort(-lengths, kind="stable")
        pieces, got = [], 0
        for i in order:
            take = min(int(lengths[i]), n - got)
            pieces.append(np.arange(starts[i], starts[i] + take, dtype=np.int32))
            got += take
            if got == n:
                break
        return self._take(np.concatenate(pieces))

    def free(self, pages: np.ndarray) -> None:
        if len(pages) == 0:
            return
        if self._is_free[pages].any() or len(np.unique(pages)) != len(pages):
            raise AssertionError("double free of KV pages")
        self._is_free[pages] = True
        self._num_free += len(pages)

    def reset(self) -> None:
        self._is_free[:] = True
        self._num_free = self.num_pages

    def free_set(self) -> set[int]:
        """For integrity checks in tests."""
        return set(np.flatnonzero(self._is_free).tolist())

    def _take(self, pages: np.ndarray) -> np.ndarray:
        self._is_free[pages] = False
        self._num_free -= len(pages)
        return pages

    def _free_runs(self) -> tuple[np.ndarray, np.ndarray]:
        """Start and length of every maximal run of free pages, in page order (~70 us for
        50k pages: the edges alternate start, end)."""
        padded = np.zeros(self.num_pages + 2, np.int8)
        padded[1:-1] = self._is_free
        edges = np.flatnonzero(padded[1:] != padded[:-1])
        return edges[0::2], edges[1::2] - edges[0::2]
