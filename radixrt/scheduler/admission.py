"""Admission: which waiting requests join the next step, and with how many tokens."""

from __future__ import annotations

from radixrt.cache.base import CacheKey
from radixrt.ipc.messages import SchedulerStats
from radixrt.scheduler.kv_manager import KVManager, pages_for
from radixrt.scheduler.policy import SchedulePolicy
from radixrt.scheduler.request import Chunk, ReqState, Request
from radixrt.scheduler.slots import SlotTable

# A waiting request sharing at least this many uncached tokens with one admitted in the same
# step waits a step, so it reuses that one's KV instead of computing it twice.
IN_BATCH_DEDUP_MIN_TOKENS = 32
# Expected fraction of max_new_tokens a running request still generates (admission reserve);
# raised after a retraction, decays back while memory is fine (like SGLang's new_token_ratio).
INIT_NEW_TOKEN_RATIO = 0.5
MIN_NEW_TOKEN_RATIO = 0.15
NEW_TOKEN_RATIO_DECAY = 0.002
RETRACT_RATIO_STEP = 0.1
MAX_FUTURE_TOKENS = 4096  # cap on one request's expected output in the reserve


class Admission:
    """Admits waiting requests in policy order (longest cached prefix first) under the step's
    token budget, keeping a page reserve for the running requests' expected growth.

    A request is matched against the prefix cache (at least one token is always computed),
    locks its match, takes a slot and the pages of its first chunk. The reserve ratio rises
    after a retraction (`on_retract`) and decays while memory is fine (`on_step`).
    """

    def __init__(self, kv: KVManager, slots: SlotTable, policy: SchedulePolicy,
                 context_length: int, stats: SchedulerStats) -> None:
        self.kv, self.slots, self.policy = kv, slots, policy
        self.context_length, self.stats = context_length, stats
        self.new_token_ratio = INIT_NEW_TOKEN_RATIO

    def reserved_pages(self, running: list[Request]) -> int:
        """Pages the running requests are expected to still need for their outputs."""
        tokens = sum(min(r.max_new_left(), self.context_length - r.fill_len) for r in running)
        return int(tokens * self.new_token_ratio) // self.kv.page_size + len(running)

    def on_retract(self) -> None:
        self.new_token_ratio = min(1.0, self.new_token_ratio + RETRACT_RATIO_STEP)

    def on_step(self, running: list[Request]) -> None:
        if self.kv.available > self.reserved_pages(running):
            self.new_token_ratio = max(MIN_NEW_TOKEN_RATIO,
                                       self.new_token_ratio - NEW_TOKEN_RATIO_DECAY)

    def admit(self, waiting: list[Request], running: list[Request], budget: int) -> list[Chunk]:
        """Start requests of `waiting` (left in place: the caller moves them) within budget
        tokens; returns their first chunks."""
        ps = self.kv.page_size
        admitted: list[Chunk] = []
        available = self.kv.available - self.reserved_pages(running)
        ordered = self.policy.order(waiting, lambda r: self.kv.match(r).num_tokens)
        for r in ordered:
            if budget <= 0 or not self.slots.available:
                break
            if r.num_pending:  # retracted while its last token was being sampled
                continue
            match = self.kv.match(r)
            if self._wait_for_sibling(r, match.num_tokens, admitted):
                continue
            n = min(r.fill_len - match.num_tokens, budget)
            new_pages = pages_for(match.num_tokens + n, ps) - len(match.pages)
            future = -(-min(r.max_new_left(), MAX_FUTURE_TOKENS) * self.new_token_ratio // ps)
            if new_pages + future > available and (running or admitted):
                break  # keep arrival fairness: do not let smaller requests jump ahead
            if not self.kv.start(r, match, n):
                break
            available -= new_pages + int(future)
            r.slot = self.slots.take()
            if r.state is ReqState.WAITING:  # first admission: count its cache hit
                r.cached_tokens = match.num_tokens
                self.stats.cache_hit_tokens += match.num_tokens
                self.stats.prompt_tokens += len(r.prompt_ids)
            r.state = ReqState.RUNNING
            admitted.append(Chunk(r, n))
            budget -= n
        return admitted

    def _wait_for_sibling(self, r: Request, matched: int, admitted: list[Chunk]) -> bool:
        """True when a request admitted this step will cache enough of r's prefix that r
        should wait one step and reuse it."""
        if r.wants_prompt_logprobs:  # computes its whole prompt anyway
            return False
        key = CacheKey(r.fill_ids(), r.namespace)
        threshold = max(IN_BATCH_DEDUP_MIN_TOKENS, self.kv.page_size)
        return any(
            self.kv.cache.reusable_len(key, CacheKey(o.req.fill_ids(), o.req.namespace))
            - matched >= threshold
            for o in admitted)
