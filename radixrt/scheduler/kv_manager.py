"""KV pages of the scheduler's requests: the page allocator plus the prefix cache."""

from __future__ import annotations

import numpy as np

from radixrt.cache.base import MatchResult, PrefixCache
from radixrt.scheduler.page_allocator import PageAllocator
from radixrt.scheduler.request import Request

_NO_PAGES = np.zeros(0, np.int32)


def pages_for(num_tokens: int, page_size: int) -> int:
    return -(-num_tokens // page_size)


class KVManager:
    """Gives requests pages and takes them back, through the prefix cache.

    Pages come from the free list, else from evicting the cache's LRU pages. A running request
    holds `pages` for tokens [0, num_computed) plus room for its next chunk; its first
    `cached_len` tokens' pages belong to the cache through `node`, which it keeps locked.
    Integrity: free + evictable + protected + in-flight == total.
    """

    def __init__(self, num_pages: int, page_size: int, cache: PrefixCache) -> None:
        self.num_pages, self.page_size = num_pages, page_size
        self.allocator = PageAllocator(num_pages)
        self.cache = cache

    @property
    def available(self) -> int:
        """Pages a request could get now: free ones plus evictable cached ones."""
        return self.allocator.num_free + self.cache.evictable_pages

    def alloc(self, n: int, after: np.ndarray = _NO_PAGES) -> np.ndarray | None:
        """n pages, evicting cached ones if needed; None if there are not that many. They
        continue `after` (the pages they extend) where the pages behind it are free."""
        if n <= 0:
            return _NO_PAGES
        if self.allocator.num_free < n:
            self.allocator.free(self.cache.evict(n - self.allocator.num_free))
        if self.allocator.num_free < n:
            return None
        return self.allocator.alloc(n, int(after[-1]) if len(after) else None)

    def match(self, r: Request) -> MatchResult:
        """r's longest cached prefix, leaving at least one token to compute, and every prompt
        position whose logits r's prompt logprobs still need."""
        end = r.fill_len - 1
        if r.extras is not None and r.wants_prompt_logprobs:
            end = min(end, r.extras.prompt_lp_next)
        return self.cache.match_prefix(r.key(end))

    def new_pages(self, r: Request, num_new: int) -> int:
        """Pages r still lacks for its next num_new tokens."""
        return pages_for(r.num_computed + num_new, self.page_size) - len(r.pages)

    def grow(self, r: Request, num_new: int) -> bool:
        """Room for r's next num_new tokens; False when the pool cannot give it."""
        need = self.new_pages(r, num_new)
        pages = self.alloc(need, r.pages)
        if pages is None:
            return False
        if need > 0:
            r.dirty_from = min(r.dirty_from, len(r.pages))
            r.pages = np.concatenate([r.pages, pages])
        return True

    def start(self, r: Request, match: MatchResult, num_new: int) -> bool:
        """r starts running on its cached prefix `match` with room for num_new more tokens;
        False (and nothing held) when the pages are not there."""
        self.cache.lock(match.node)
        pages = self.alloc(pages_for(match.num_tokens + num_new, self.page_size)
                           - len(match.pages), match.pages)
        if pages is None:
            self.cache.unlock(match.node)
            return False
        r.node, r.cached_len, r.num_computed = match.node, match.num_tokens, match.num_tokens
        r.pages = np.concatenate([match.pages, pages])
        r.dirty_from = 0
        return True

    def share_computed(self, r: Request) -> None:
        """After a prefill chunk: r's full computed pages go into the cache, so that requests
        admitted later reuse them before r finishes."""
        ps = self.page_size
        n_full = r.cacheable_len // ps * ps
        if n_full <= r.cached_len:
            return
        shared, duplicates = self.cache.share_prefix(r.key(n_full), r.pages, r.node,
                                                     r.cached_len)
        self.allocator.free(duplicates)
        if len(duplicates):  # the worker's page table must point at the cache's copies
            r.dirty_from = min(r.dirty_from, r.cached_len // ps)
        r.pages = np.concatenate([shared.pages, r.pages[shared.num_tokens // ps :]])
        r.node, r.cached_len = shared.node, shared.num_tokens

    def release(self, r: Request) -> None:
        """r stops running (finish, abort, retraction): its computed pages go into the cache,
        the rest back to the allocator, and its lock is dropped."""
        n_full = max(r.cacheable_len, r.cached_len) // self.page_size * self.page_size
        self.allocator.free(self.cache.release(r.key(n_full), r.pages, r.node, r.cached_len))
        r.node, r.pages, r.cached_len = None, _NO_PAGES, 0
        r.num_computed, r.dirty_from = 0, 0

    def flush(self) -> int:
        """Drop the whole cache (no request may hold a lock); returns the pages freed."""
        freed = self.cache.reset()
        self.allocator.free(freed)
        return len(freed)

    def evict_unlocked(self) -> int:
        """Free every cached page no request holds; returns how many."""
        pages = self.cache.evict(self.cache.evictable_pages)
        self.allocator.free(pages)
        return len(pages)

    def pages_in_flight(self, running: list[Request]) -> int:
        """Pages held by running requests that the cache does not own."""
        return sum(len(r.pages) - r.cached_len // self.page_size for r in running)

    def check_integrity(self, running: list[Request]) -> None:
        """free + evictable + protected + in-flight == total (tests call this every step)."""
        self.cache.check_integrity()
        c, free = self.cache, self.allocator.num_free
        in_flight = self.pages_in_flight(running)
        total = free + c.evictable_pages + c.protected_pages + in_flight
        assert total == self.num_pages, (
            f"page leak: free {free} + evictable {c.evictable_pages} + protected "
            f"{c.protected_pages} + in-flight {in_flight} != total {self.num_pages}")
