"""The prefix-cache interface the scheduler talks to.

Two implementations: `RadixCache` (radix tree of KV pages, LRU eviction) and `NoPrefixCache`
(--disable-radix-cache: nothing is shared, every finished request frees its pages).

Units: keys are token ids; values are KV page indices, one per `page_size` tokens. Only whole
pages are cached, so every matched or inserted length is a multiple of `page_size`.

Besides the primitives (match, insert, lock, evict), the interface carries what a request does
with the cache, so the scheduler never asks which cache it has: `share_prefix` (a running
request's computed pages become shared), `release` (a request ends) and `reusable_len` (would
waiting for a sibling's insert pay off). NoPrefixCache answers "nothing is shared" to each.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class CacheKey:
    """Token ids in one cache namespace. Keys of different namespaces never share KV."""

    token_ids: np.ndarray  # int32
    namespace: str | None = None  # cache_salt (later: a LoRA id)

    def __len__(self) -> int:
        return len(self.token_ids)

    def prefix(self, n: int) -> CacheKey:
        return CacheKey(self.token_ids[:n], self.namespace)


@dataclass
class MatchResult:
    pages: np.ndarray  # int32 [num_tokens // page_size]: KV pages of the matched prefix
    num_tokens: int  # matched length (a multiple of page_size)
    node: Any  # handle for lock/unlock: the deepest matched node (root when nothing matched)


def common_prefix_len(a: np.ndarray, b: np.ndarray, page_size: int = 1) -> int:
    """Length of the common prefix of a and b, rounded down to a page multiple (numpy)."""
    n = min(len(a), len(b))
    if n == 0:
        return 0
    neq = a[:n] != b[:n]
    i = int(neq.argmax())  # argmax stops at the first True
    if not neq[i]:
        i = n
    return i - i % page_size


class PrefixCache(ABC):
    """KV pages keyed by token prefixes, shared between requests (see the module docstring)."""

    page_size: int

    # ------------------------------------------------------------ what a request does

    def share_prefix(self, key: CacheKey, pages: np.ndarray, node: Any, cached_len: int
                     ) -> tuple[MatchResult, np.ndarray]:
        """A running request computed `key` (whole pages, KV in pages[:len(key) // page_size])
        and so far shares its first `cached_len` tokens through its locked `node`. Share all of
        key: insert it and move the request's lock to the deepest node.

        Returns (shared, duplicates): the request's first shared.num_tokens // page_size pages
        become shared.pages, and `duplicates` are request pages that repeated what the cache
        already held (the caller frees them).
        """
        n = len(key)
        already = self.insert(key, pages[: n // self.page_size])
        duplicates = pages[cached_len // self.page_size : already // self.page_size]
        shared = self.match_prefix(key)
        assert shared.num_tokens == n, "an inserted prefix must match in full"
        self.lock(shared.node)
        self.unlock(node)
        return shared, duplicates

    def release(self, key: CacheKey, pages: np.ndarray, node: Any, cached_len: int
                ) -> np.ndarray:
        """A request ends (finish, abort, retraction) having computed `key` (whole pages) into
        `pages` (plus maybe a partial page): cache it and drop the request's lock. Returns the
        pages the caller frees: duplicates of what the cache held, and pages past key."""
        n = len(key)
        already = self.insert(key, pages[: n // self.page_size])
        self.unlock(node)
        return np.concatenate([pages[cached_len // self.page_size : already // self.page_size],
                               pages[n // self.page_size :]])

    def reusable_len(self, key: CacheKey, other: CacheKey) -> int:
        """Tokens of key that could be matched once `other` is cached (whole pages, same
        namespace): what waiting for another request's prefill would save."""
        if key.namespace != other.namespace:
            return 0
        return common_prefix_len(key.token_ids, other.token_ids, self.page_size)

    # ------------------------------------------------------------ primitives

    @abstractmethod
    def match_prefix(self, key: CacheKey) -> MatchResult:
        """Longest cached prefix of key (whole pages only). Touches the path (LRU time)."""

    @abstractmethod
    def insert(self, key: CacheKey, pages: np.ndarray) -> int:
        """Cache key[:len(pages) * page_size] with those pages.

        Returns how many leading tokens were already cached: the caller still owns the pages
        of that part and must free the ones it does not share with the tree (pages that
        duplicate what the tree already held). Pages past that part now belong to the tree.
        """

    @abstractmethod
    def lock(self, node: Any) -> None:
        """A running request uses node's path: protect it from eviction."""

    @abstractmethod
    def unlock(self, node: Any) -> None:
        """Undo one lock(node)."""

    @abstractmethod
    def evict(self, num_pages: int) -> np.ndarray:
        """Evict at least num_pages unlocked pages in LRU order (fewer if there are not
        that many). Returns the freed page ids; the caller gives them to the allocator."""

    @property
    @abstractmethod
    def evictable_pages(self) -> int:
        """Pages in the tree that no running request locks."""

    @property
    @abstractmethod
    def protected_pages(self) -> int:
        """Pages in the tree locked by running requests."""

    @abstractmethod
    def reset(self) -> np.ndarray:
        """Drop everything (flush). Only valid with no locks held; returns the freed pages."""

    @abstractmethod
    def check_integrity(self) -> None:
        """Assert internal invariants (sizes, lock counts, evictable set). For tests."""
