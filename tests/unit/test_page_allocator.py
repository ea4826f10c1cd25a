"""The page allocator: every page handed out once, and runs of consecutive pages per request
(attention streams them; docs/benchmarks.md, "CPU: contiguous KV pages")."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from radixrt.scheduler.page_allocator import OutOfPages, PageAllocator


def runs(pages: np.ndarray) -> int:
    """How many runs of consecutive ids the sequence has."""
    return 1 + int(np.count_nonzero(np.diff(pages) != 1)) if len(pages) else 0


def test_requests_growing_in_turn_keep_their_pages_consecutive() -> None:
    """What decode does: 8 requests start, then each grows by one page in turn."""
    a = PageAllocator(1024)
    held = [a.alloc(20) for _ in range(8)]
    for _ in range(40):
        for i, pages in enumerate(held):
            held[i] = np.concatenate([pages, a.alloc(1, after=int(pages[-1]))])
    assert all(runs(p) == 1 for p in held), [runs(p) for p in held]
    everything = np.concatenate(held)
    assert len(np.unique(everything)) == len(everything) == 8 * 60
    assert a.num_free == 1024 - 8 * 60


def test_a_request_whose_next_pages_are_taken_moves_to_a_new_run() -> None:
    a = PageAllocator(64)
    first = a.alloc(4)
    a.alloc(60)  # everything after it
    a.free(np.arange(30, 64, dtype=np.int32))
    grown = a.alloc(3, after=int(first[-1]))
    assert runs(grown) == 1 and grown[0] >= 30


def test_fragmented_pool_still_gives_every_free_page() -> None:
    a = PageAllocator(32)
    a.alloc(32)
    a.free(np.arange(0, 32, 2, dtype=np.int32))  # every other page
    got = a.alloc(16)
    assert sorted(got.tolist()) == list(range(0, 32, 2))
    with pytest.raises(OutOfPages):
        a.alloc(1)


def test_double_free_is_caught() -> None:
    a = PageAllocator(8)
    pages = a.alloc(3)
    a.free(pages[:1])
    with pytest.raises(AssertionError, match="double free"):
        a.free(pages[:2])
    with pytest.raises(AssertionError, match="double free"):
        a.free(np.array([pages[2], pages[2]], np.int32))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(1, 9), st.integers(0, 7)),
                min_size=1, max_size=80))
def test_alloc_and_free_never_lose_or_duplicate_a_page(ops: list[tuple[int, int, int]]) -> None:
    total = 48
    a = PageAllocator(total)
    held: list[np.ndarray] = []
    for kind, n, pick in ops:
        if kind == 0 and held:  # free a request's pages
            a.free(held.pop(pick % len(held)))
        elif kind == 1 and held:  # grow a request after its last page
            i = pick % len(held)
            if n <= a.num_free:
                held[i] = np.concatenate([held[i], a.alloc(n, after=int(held[i][-1]))])
        elif n <= a.num_free:  # a new request
            held.append(a.alloc(n))
        else:
            with pytest.raises(OutOfPages):
                a.alloc(n)
        taken = np.concatenate(held) if held else np.zeros(0, np.int32)
        assert len(np.unique(taken)) == len(taken)
        assert a.free_set().isdisjoint(taken.tolist())
        assert len(a.free_set()) + len(taken) == total == a.num_free + len(taken)
