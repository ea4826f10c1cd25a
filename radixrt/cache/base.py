"""The prefix-cache interface the scheduler talks to.

Two implementations: `RadixCache` (radix tree of KV pages, LRU eviction) and `NoPrefixCache`
(--disable-radix-cache: nothing is shared, every finished request frees its pages).

Units: keys are token ids; values are KV page indices, one per `page_size` tokens. Only whole
pages are cached, so every matched or inserted length is a multiple of `page_size`.
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


class PrefixCache(ABC):
    page_size: int

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
