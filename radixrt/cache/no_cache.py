"""--disable-radix-cache: a prefix cache that never caches anything."""

from __future__ import annotations

from typing import Any

import numpy as np

from radixrt.cache.base import CacheKey, MatchResult, PrefixCache


class _NoNode:
    """The node every match returns; lock/unlock of it do nothing."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "NoPrefixCache.ROOT"


class NoPrefixCache(PrefixCache):
    """Nothing is shared: every request computes its whole prompt, and finished requests free
    all their pages.

    `insert` keeps nothing and returns the full inserted length (len(pages) * page_size,
    trailing partial page included), i.e. it reports every page as "already cached" so that,
    under the PrefixCache.insert contract, the caller still owns -- and frees -- ALL of them.
    Returning 0 would instead mean "the tree took every page", and they would leak.
    """

    ROOT: Any = _NoNode()

    def __init__(self, page_size: int) -> None:
        if page_size < 1:
            raise ValueError(f"page_size must be >= 1, got {page_size}")
        self.page_size = page_size

    def match_prefix(self, key: CacheKey) -> MatchResult:
        return MatchResult(np.zeros(0, dtype=np.int32), 0, self.ROOT)

    def share_prefix(self, key: CacheKey, pages: np.ndarray, node: Any, cached_len: int
                     ) -> tuple[MatchResult, np.ndarray]:
        # Nothing becomes shared: the request keeps all its pages.
        return self.match_prefix(key), np.zeros(0, dtype=np.int32)

    def reusable_len(self, key: CacheKey, other: CacheKey) -> int:
        return 0  # nothing is ever reused, so nobody waits for a sibling

    def insert(self, key: CacheKey, pages: np.ndarray) -> int:
        return len(pages) * self.page_size

    def lock(self, node: Any) -> None:
        pass

    def unlock(self, node: Any) -> None:
        pass

    def evict(self, num_pages: int) -> np.ndarray:
        return np.zeros(0, dtype=np.int32)

    @property
    def evictable_pages(self) -> int:
        return 0

    @property
    def protected_pages(self) -> int:
        return 0

    @property
    def total_pages(self) -> int:
        return 0

    def reset(self) -> np.ndarray:
        return np.zeros(0, dtype=np.int32)

    def check_integrity(self) -> None:
        pass
