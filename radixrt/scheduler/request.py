"""A request as the scheduler tracks it: its state, tokens, KV pages, slot and radix-tree lock."""

from __future__ import annotations

import time
from dataclasses import InitVar, dataclass, field
from enum import Enum
from typing import Any, NamedTuple

import numpy as np

from radixrt.cache.base import CacheKey
from radixrt.sampling_params import SamplingParams


class ReqState(Enum):
    """Where a request is in its life. Only RUNNING requests hold a slot, pages and a lock."""

    GRAMMAR_PENDING = "grammar_pending"  # its grammar compiles off the critical path
    WAITING = "waiting"  # queued, never admitted
    RUNNING = "running"  # holds a slot and KV pages; fed a chunk every step
    RETRACTED = "retracted"  # queued again after a retraction (its prefix is in the tree)
    FINISHED = "finished"  # stop, length, abort or refused: reported once, then forgotten


@dataclass(eq=False)
class RequestExtras:
    """A request's asks besides output tokens: prompt logprobs (sampling.prompt_logprobs),
    its embedding, or a prefill only (max_new_tokens 0)."""

    embed: bool = False  # the last prompt token's final hidden state, nothing generated
    # Prompt logprobs: the logits at prompt position p give token p + 1's. Positions <
    # prompt_lp_next are in a step (sent or done); the values come back in prompt order and
    # go out once, with the first TokenOut.
    prompt_lp_next: int = 0
    prompt_lps: list[float] = field(default_factory=list)
    prompt_top: list[list[tuple[int, float]]] = field(default_factory=list)
    prompt_lp_sent: bool = False
    embedding: np.ndarray | None = None  # back from the worker, until the next TokenOut


@dataclass(eq=False)
class Request:
    """One generation request in the scheduler.

    Tokens [0, num_computed) of fill_ids (prompt + output so far) have KV in `pages` (or get
    it from a step in flight); the first `cached_len` of them are shared with the prefix cache
    through `node`, which the request keeps locked while it runs. `num_pending` tokens have been
    sampled by steps in flight whose results are not back yet (overlap scheduling): they count
    in fill_len, but their ids are unknown, so fill_ids stops at known_len. Step outputs
    accumulate in `new_*` until the next TokenOut.
    """

    rid: str
    prompt_ids: np.ndarray  # int32
    sampling: SamplingParams
    namespace: str | None = None
    arrival: float = field(default_factory=time.monotonic)
    state: ReqState = ReqState.WAITING
    output_ids: list[int] = field(default_factory=list)
    num_pending: int = 0  # tokens sampled by steps in flight, ids not back yet
    # KV state, meaningful while RUNNING.
    slot: int = -1
    pages: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    num_computed: int = 0
    cached_len: int = 0
    node: Any = None
    dirty_from: int = 0  # worker's page table is stale for pages [dirty_from:]
    registered: bool = False  # worker has this slot's sampling state
    # Reporting
    cached_tokens: int = 0  # prefix reused at the first admission
    finish_reason: str | None = None
    matched_stop: int | None = None
    error: str | None = None
    num_retractions: int = 0
    new_ids: list[int] = field(default_factory=list)  # produced since the last TokenOut
    new_logprobs: list[float] = field(default_factory=list)
    new_top: list[list[tuple[int, float]]] = field(default_factory=list)
    # What a few requests ask for besides output tokens; None for the rest, so the per-step
    # paths check one attribute (and every request stays as small: fields cost per step).
    extras: RequestExtras | None = None
    embed: InitVar[bool] = False  # wants the last prompt token's hidden state
    # Structured output: the compile in flight, then the request's GrammarState.
    grammar_future: Any = None
    grammar: Any = None

    def __post_init__(self, embed: bool) -> None:
        sp = self.sampling
        if sp.prompt_logprobs is not None or embed or sp.max_new_tokens == 0:
            self.extras = RequestExtras(embed)

    @property
    def known_len(self) -> int:
        """Tokens whose ids the scheduler knows: prompt + output so far."""
        return len(self.prompt_ids) + len(self.output_ids)

    @property
    def fill_len(self) -> int:
        """Tokens whose KV the request needs: prompt + output, pending ones included (the last
        one's KV is next)."""
        return len(self.prompt_ids) + len(self.output_ids) + self.num_pending

    @property
    def cacheable_len(self) -> int:
        """Computed tokens the prefix cache may take: known ids only, and never the last known
        token, whose KV only an extra overlapped step computes (so overlap on and off cache
        the same tokens)."""
        return min(self.num_computed, self.known_len - 1)

    def fill_ids(self, end: int | None = None) -> np.ndarray:
        if not self.output_ids:
            return self.prompt_ids[:end]
        ids = np.concatenate([self.prompt_ids, np.asarray(self.output_ids, dtype=np.int32)])
        return ids[:end]

    def key(self, end: int) -> CacheKey:
        return CacheKey(self.fill_ids(end), self.namespace)

    @property
    def wants_prompt_logprobs(self) -> bool:
        """Some prompt positions still need their logits computed (and not taken from the
        prefix cache, which keeps KV, not logits)."""
        return (self.extras is not None and self.sampling.prompt_logprobs is not None
                and self.extras.prompt_lp_next < len(self.prompt_ids) - 1)

    def prompt_lp_span(self, num_new: int) -> tuple[int, int]:
        """The prompt positions [lo, hi) whose logits the next chunk of num_new tokens (from
        num_computed) computes for the prompt logprobs; lo == hi for none."""
        x = self.extras
        if x is None or self.sampling.prompt_logprobs is None:
            return 0, 0
        lo = max(self.num_computed, x.prompt_lp_next)
        hi = min(self.num_computed + num_new, len(self.prompt_ids) - 1)
        assert self.num_computed <= x.prompt_lp_next or lo >= hi, "prompt positions skipped"
        return lo, max(lo, hi)

    @property
    def remaining(self) -> int:
        """Tokens still to feed the model before the next sample."""
        return self.fill_len - self.num_computed

    @property
    def is_decoding(self) -> bool:
        return self.remaining == 1 and self.num_computed > 0

    @property
    def running(self) -> bool:
        return self.state is ReqState.RUNNING

    @property
    def finished(self) -> bool:
        return self.state is ReqState.FINISHED

    def max_new_left(self) -> int:
        return self.sampling.max_new_tokens - len(self.output_ids) - self.num_pending


class Chunk(NamedTuple):
    """A request's share of one step: its next `num_new` tokens."""

    req: Request
    num_new: int
