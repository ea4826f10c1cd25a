"""A request as the scheduler tracks it: tokens, KV pages, slot, lock on the radix tree."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from radixrt.cache.base import CacheKey
from radixrt.sampling_params import SamplingParams


@dataclass(eq=False)
class Request:
    rid: str
    prompt_ids: np.ndarray  # int32
    sampling: SamplingParams
    namespace: str | None = None
    arrival: float = field(default_factory=time.monotonic)
    output_ids: list[int] = field(default_factory=list)
    # KV state. Tokens [0, num_computed) have KV in `pages`; the first cached_len of them are
    # shared with the radix tree through `node` (locked while the request runs).
    slot: int | None = None
    pages: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    num_computed: int = 0
    cached_len: int = 0
    node: Any = None
    dirty_from: int = 0  # worker's page table is stale for pages [dirty_from:]
    registered: bool = False  # worker has this slot's sampling state
    # Reporting
    cached_tokens: int = -1  # prefix reused at first admission (-1 until admitted)
    finish_reason: str | None = None
    matched_stop: int | None = None
    error: str | None = None
    num_retractions: int = 0
    new_ids: list[int] = field(default_factory=list)  # produced since the last TokenOut
    new_logprobs: list[float] = field(default_factory=list)
    new_top: list[list[tuple[int, float]]] = field(default_factory=list)

    @property
    def fill_len(self) -> int:
        """Tokens whose KV the request needs: prompt + output (the last one's KV is next)."""
        return len(self.prompt_ids) + len(self.output_ids)

    def fill_ids(self, end: int | None = None) -> np.ndarray:
        if not self.output_ids:
            return self.prompt_ids[:end]
        ids = np.concatenate([self.prompt_ids, np.asarray(self.output_ids, dtype=np.int32)])
        return ids[:end]

    def key(self, end: int) -> CacheKey:
        return CacheKey(self.fill_ids(end), self.namespace)

    @property
    def remaining(self) -> int:
        """Tokens still to feed the model before the next sample."""
        return self.fill_len - self.num_computed

    @property
    def is_decoding(self) -> bool:
        return self.remaining == 1 and self.num_computed > 0

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def max_new_left(self) -> int:
        return self.sampling.max_new_tokens - len(self.output_ids)
