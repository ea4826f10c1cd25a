"""The scheduler: waiting/running queues, radix-cache matching, page allocation, batching.

Runs without sockets: `add_request` / `abort` / `schedule` -> ForwardBatch -> (worker) ->
`process_result` -> TokenOutBatch. The process wrapper in scheduler/process.py adds ZeroMQ.

Every running request is fed `fill_ids[num_computed : num_computed + chunk]` each step: a
decode is a chunk of one token, a prefill is split into chunks under the step's token budget.
"""

from __future__ import annotations

import logging
import time
from collections import deque

import numpy as np

from radixrt.cache.base import PrefixCache
from radixrt.cache.no_cache import NoPrefixCache
from radixrt.cache.radix_cache import RadixCache
from radixrt.config import EngineConfig
from radixrt.ipc.messages import (
    ForwardBatch,
    GenerateReq,
    NewSlot,
    SchedulerStats,
    StepResult,
    TokenOut,
    TokenOutBatch,
)
from radixrt.scheduler.page_allocator import PageAllocator
from radixrt.scheduler.policy import SchedulePolicy
from radixrt.scheduler.request import Request

logger = logging.getLogger("radixrt")

# A waiting request sharing at least this many uncached tokens with one admitted in the same
# step waits a step, so it reuses that one's KV instead of computing it twice.
IN_BATCH_DEDUP_MIN_TOKENS = 32
# Expected fraction of max_new_tokens a running request still generates (admission reserve);
# raised after a retraction, decays back while memory is fine (like SGLang's new_token_ratio).
INIT_NEW_TOKEN_RATIO = 0.5
MIN_NEW_TOKEN_RATIO = 0.15
NEW_TOKEN_RATIO_DECAY = 0.002


def make_cache(config: EngineConfig) -> PrefixCache:
    if config.disable_radix_cache:
        return NoPrefixCache(config.page_size)
    return RadixCache(config.page_size)


class Scheduler:
    def __init__(self, config: EngineConfig, num_pages: int, context_length: int,
                 eos_ids: tuple[int, ...] = (), vocab_size: int | None = None) -> None:
        self.config = config
        self.ps = config.page_size
        self.num_pages = num_pages
        self.context_length = context_length
        self.eos_ids = eos_ids
        self.vocab_size = vocab_size
        self.allocator = PageAllocator(num_pages)
        self.cache = make_cache(config)
        self.cache_enabled = not config.disable_radix_cache
        self.policy = SchedulePolicy(config.schedule_policy)
        self.waiting: list[Request] = []
        self.running: list[Request] = []  # admission order
        self.requests: dict[str, Request] = {}
        self.free_slots = deque(range(config.max_running_requests))
        self.freed_slots: list[int] = []  # to tell the worker with the next batch
        self.finished: list[Request] = []  # finished since the last TokenOut
        self.step_id = 0
        self.new_token_ratio = INIT_NEW_TOKEN_RATIO
        self.stats = SchedulerStats(pages_total=num_pages, page_size=self.ps)
        self._batch: list[tuple[Request, int]] = []  # being built by schedule()
        self._inflight: list[tuple[Request, int]] = []  # sent to the worker

    # ------------------------------------------------------------------ inputs
    def add_request(self, req: GenerateReq) -> None:
        r = Request(req.rid, np.asarray(req.input_ids, dtype=np.int32), req.sampling,
                    req.cache_salt)
        self.requests[r.rid] = r
        need = len(r.prompt_ids) + 1
        if len(r.prompt_ids) == 0:
            self._reject(r, "the prompt is empty")
        elif need > self.context_length:
            self._reject(r, f"the prompt ({len(r.prompt_ids)} tokens) does not fit the "
                            f"context length {self.context_length}")
        elif -(-need // self.ps) > self.num_pages:
            self._reject(r, f"the prompt ({len(r.prompt_ids)} tokens) is larger than the KV "
                            f"cache ({self.num_pages * self.ps} tokens)")
        else:
            self.waiting.append(r)

    def _reject(self, r: Request, error: str) -> None:
        r.error = error
        r.finish_reason = "abort"
        r.cached_tokens = 0
        self.finished.append(r)

    def abort(self, rid: str) -> None:
        r = self.requests.get(rid)
        if r is None or r.finished:
            return
        if r in self.waiting:
            self.waiting.remove(r)
            if r.cached_tokens < 0:
                r.cached_tokens = 0
        r.finish_reason = "abort"
        if r.slot is not None:
            self._release(r)
        self.finished.append(r)

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running or self.finished)

    # ------------------------------------------------------------------ page bookkeeping
    def _alloc(self, n: int) -> np.ndarray | None:
        if n <= 0:
            return np.zeros(0, np.int32)
        if self.allocator.num_free < n:
            self.allocator.free(self.cache.evict(n - self.allocator.num_free))
        if self.allocator.num_free < n:
            return None
        return self.allocator.alloc(n)

    def _pages_for(self, r: Request, n_new: int) -> int:
        return -(-(r.num_computed + n_new) // self.ps) - len(r.pages)

    def _grow(self, r: Request, n_new: int) -> bool:
        need = self._pages_for(r, n_new)
        pages = self._alloc(need)
        if pages is None:
            return False
        if need > 0:
            r.dirty_from = min(r.dirty_from, len(r.pages))
            r.pages = np.concatenate([r.pages, pages])
        return True

    def _cache_prefix(self, r: Request, finished: bool) -> None:
        """Give the request's full computed pages to the tree (dedup against what it holds).

        finished: also drop the request's lock and free its partial last page.
        """
        n_full = r.num_computed // self.ps * self.ps
        if n_full > r.cached_len or finished:
            already = self.cache.insert(r.key(n_full), r.pages[: n_full // self.ps])
            dup = r.pages[r.cached_len // self.ps : already // self.ps]
            self.allocator.free(dup)
            if finished:
                self.allocator.free(r.pages[n_full // self.ps :])
                if r.node is not None:
                    self.cache.unlock(r.node)
                r.node, r.pages, r.cached_len = None, np.zeros(0, np.int32), 0
                return
            match = self.cache.match_prefix(r.key(n_full))
            assert match.num_tokens == n_full, "inserted prefix must match in full"
            self.cache.lock(match.node)
            if r.node is not None:
                self.cache.unlock(r.node)
            if len(dup):
                r.dirty_from = min(r.dirty_from, r.cached_len // self.ps)
            r.pages = np.concatenate([match.pages, r.pages[n_full // self.ps :]])
            r.node, r.cached_len = match.node, n_full

    def _release(self, r: Request) -> None:
        """A running request ends (finish, abort, retraction): cache its KV, free its slot."""
        self._cache_prefix(r, finished=True)
        if r in self.running:
            self.running.remove(r)
        assert r.slot is not None
        self.freed_slots.append(r.slot)
        self.free_slots.append(r.slot)
        r.slot, r.num_computed, r.registered, r.dirty_from = None, 0, False, 0

    def _retract(self) -> bool:
        """Free the running request with the least progress; it requeues and redoes its
        prefill later (its computed prefix stays in the tree, so the redo is cheap)."""
        if len(self.running) <= 1:
            return False
        in_batch = {id(r) for r, _ in self._batch}
        candidates = [r for r in self.running if id(r) not in in_batch] or self.running
        victim = min(candidates, key=lambda r: (len(r.output_ids), -len(r.prompt_ids)))
        self._batch = [(r, n) for r, n in self._batch if r is not victim]
        self._release(victim)
        victim.num_retractions += 1
        self.stats.retractions += 1
        self.waiting.append(victim)
        self.new_token_ratio = min(1.0, self.new_token_ratio + 0.1)
        logger.debug("retracted %s (%d tokens)", victim.rid, victim.fill_len)
        return True

    # ------------------------------------------------------------------ scheduling
    def _prefix_len(self, r: Request) -> int:
        return self.cache.match_prefix(r.key(r.fill_len - 1)).num_tokens

    def _reserved_pages(self) -> int:
        """Pages the running requests are expected to still need for their outputs."""
        tokens = sum(min(r.max_new_left(), self.context_length - r.fill_len)
                     for r in self.running)
        return int(tokens * self.new_token_ratio) // self.ps + len(self.running)

    def schedule(self) -> ForwardBatch | None:
        """Pick the next step's work. None when there is nothing to run."""
        t0 = time.perf_counter()
        budget = self.config.chunked_prefill_size
        self._batch = []
        # 1. Running requests: decodes always, unfinished prefills within the budget.
        for r in sorted(self.running, key=lambda r: not r.is_decoding):
            if r.slot is None:  # retracted while making room for an earlier one
                continue
            n = 1 if r.is_decoding else min(r.remaining, max(budget, 0))
            if n <= 0:
                continue
            ok = self._grow(r, n)
            while not ok and r.slot is not None and self._retract():
                ok = r.slot is not None and self._grow(r, n)
            if r.slot is None:
                continue
            if not ok:
                # Alone, it outgrew the whole pool: it cannot go on.
                r.finish_reason = "length"
                self._release(r)
                self.finished.append(r)
                continue
            self._batch.append((r, n))
            budget -= n
        # 2. Admit waiting requests.
        if self.waiting and budget > 0 and self.free_slots:
            self._admit(budget)
        self.stats.tick_seconds += time.perf_counter() - t0
        if not self._batch:
            return None
        return self._build_batch(self._batch)

    def _admit(self, budget: int) -> None:
        admitted = 0
        available = self.allocator.num_free + self.cache.evictable_pages - self._reserved_pages()
        ordered = self.policy.order(self.waiting, self._prefix_len)
        batch_prompts: list[tuple[str | None, np.ndarray, int]] = []
        for r in ordered:
            if budget <= 0 or not self.free_slots:
                break
            key = r.key(r.fill_len - 1)
            match = self.cache.match_prefix(key)
            if self._shares_with_batch(r, match.num_tokens, batch_prompts):
                continue
            n = min(r.fill_len - match.num_tokens, budget)
            new_pages = -(-(match.num_tokens + n) // self.ps) - len(match.pages)
            future = -(-min(r.max_new_left(), 4096) * self.new_token_ratio // self.ps)
            if new_pages + future > available and (len(self.running) or admitted):
                break  # keep arrival fairness: do not let smaller requests jump ahead
            self.cache.lock(match.node)
            pages = self._alloc(new_pages)
            if pages is None:
                self.cache.unlock(match.node)
                break
            available -= new_pages + int(future)
            self.waiting.remove(r)
            r.slot = self.free_slots.popleft()
            r.node, r.cached_len, r.num_computed = match.node, match.num_tokens, match.num_tokens
            r.pages = np.concatenate([match.pages, pages])
            r.dirty_from = 0
            if r.cached_tokens < 0:
                r.cached_tokens = match.num_tokens
                self.stats.cache_hit_tokens += match.num_tokens
                self.stats.prompt_tokens += len(r.prompt_ids)
            self.running.append(r)
            self._batch.append((r, n))
            admitted += 1
            batch_prompts.append((r.namespace, r.fill_ids(), match.num_tokens))
            budget -= n

    def _shares_with_batch(self, r: Request, matched: int,
                           batch_prompts: list[tuple[str | None, np.ndarray, int]]) -> bool:
        if not self.cache_enabled or not batch_prompts:
            return False
        ids = r.fill_ids()
        for ns, other, _ in batch_prompts:
            if ns != r.namespace:
                continue
            n = min(len(ids), len(other))
            diff = np.nonzero(ids[:n] != other[:n])[0]
            common = int(diff[0]) if len(diff) else n
            if common - matched >= max(IN_BATCH_DEDUP_MIN_TOKENS, self.ps):
                return True
        return False

    def _build_batch(self, batch: list[tuple[Request, int]]) -> ForwardBatch:
        self.step_id += 1
        B = len(batch)
        slots = np.empty(B, np.int32)
        start = np.empty(B, np.int32)
        num_new = np.empty(B, np.int32)
        sample = np.empty(B, bool)
        ids, new_slots = [], []
        p_slots, p_offs, p_lens, p_ids = [], [], [], []
        for i, (r, n) in enumerate(batch):
            assert r.slot is not None
            slots[i], start[i], num_new[i] = r.slot, r.num_computed, n
            sample[i] = r.num_computed + n == r.fill_len
            if n == 1 and r.output_ids and r.num_computed == r.fill_len - 1:
                ids.append(np.asarray(r.output_ids[-1:], np.int32))
            else:
                ids.append(r.fill_ids(r.num_computed + n)[r.num_computed :])
            if not r.registered:
                s = r.sampling
                new_slots.append(NewSlot(
                    r.slot, s,
                    prompt_ids=r.prompt_ids if s.repetition_penalty != 1.0 else None,
                    eos_ids=self.eos_ids,
                    output_ids=np.asarray(r.output_ids, np.int32) if r.output_ids else None))
                r.registered = True
            if r.dirty_from < len(r.pages):
                p_slots.append(r.slot)
                p_offs.append(r.dirty_from)
                p_lens.append(len(r.pages) - r.dirty_from)
                p_ids.append(r.pages[r.dirty_from :])
                r.dirty_from = len(r.pages)
        fb = ForwardBatch(
            step=self.step_id, slots=slots, start_pos=start, num_new=num_new,
            input_ids=np.concatenate(ids).astype(np.int32), sample=sample,
            page_slots=np.asarray(p_slots, np.int32), page_offsets=np.asarray(p_offs, np.int32),
            page_lens=np.asarray(p_lens, np.int32),
            page_ids=np.concatenate(p_ids).astype(np.int32) if p_ids else np.zeros(0, np.int32),
            new_slots=new_slots, freed_slots=self.freed_slots,
        )
        self.freed_slots = []
        self._inflight = list(batch)
        return fb

    # ------------------------------------------------------------------ results
    def process_result(self, result: StepResult) -> TokenOutBatch:
        t0 = time.perf_counter()
        batch = self._inflight
        self._inflight = []
        self._batch = []
        self.stats.steps += 1
        self.stats.forward_seconds += result.forward_seconds
        for i, (r, n) in enumerate(batch):
            if r.finished or r.slot is None:
                continue  # aborted while the step ran
            was_prefill = n > 1
            r.num_computed += n
            tok = int(result.next_ids[i])
            if tok >= 0:
                r.output_ids.append(tok)
                r.new_ids.append(tok)
                self.stats.generated_tokens += 1
                if result.logprobs is not None and r.sampling.logprobs:
                    r.new_logprobs.append(float(result.logprobs[i]))
                    if result.top_ids is not None and r.sampling.top_logprobs:
                        k = r.sampling.top_logprobs
                        r.new_top.append(list(zip(result.top_ids[i, :k].tolist(),
                                                  result.top_logprobs[i, :k].tolist())))
                self._check_finish(r, tok)
            if r.finished:
                self._release(r)
                self.finished.append(r)
            elif was_prefill and self.cache_enabled:
                self._cache_prefix(r, finished=False)
        if self.allocator.num_free + self.cache.evictable_pages > self._reserved_pages():
            self.new_token_ratio = max(MIN_NEW_TOKEN_RATIO,
                                       self.new_token_ratio - NEW_TOKEN_RATIO_DECAY)
        out = self.collect_outputs(batch)
        self.stats.tick_seconds += time.perf_counter() - t0
        return out

    def _check_finish(self, r: Request, tok: int) -> None:
        s = r.sampling
        if len(r.output_ids) >= s.min_new_tokens:
            if (not s.ignore_eos and tok in self.eos_ids) or tok in s.stop_token_ids:
                r.finish_reason, r.matched_stop = "stop", tok
                return
        if len(r.output_ids) >= s.max_new_tokens or r.fill_len >= self.context_length:
            r.finish_reason = "length"

    def collect_outputs(self, batch: list[tuple[Request, int]] | None = None) -> TokenOutBatch:
        """A TokenOut for each request with new tokens or a new finish since the last call."""
        reqs: list[Request] = []
        seen: set[int] = set()
        for r in [r for r, _ in (batch or [])] + self.finished:
            if id(r) not in seen and (r.new_ids or r.finished):
                seen.add(id(r))
                reqs.append(r)
        self.finished = []
        outs = []
        for r in reqs:
            outs.append(TokenOut(
                r.rid, r.new_ids, r.finish_reason, r.matched_stop,
                prompt_tokens=len(r.prompt_ids), cached_tokens=max(r.cached_tokens, 0),
                completion_tokens=len(r.output_ids),
                logprobs=r.new_logprobs if r.sampling.logprobs else None,
                top_logprobs=r.new_top if r.sampling.top_logprobs else None, error=r.error))
            r.new_ids, r.new_logprobs, r.new_top = [], [], []
            if r.finished:
                self.requests.pop(r.rid, None)
        return TokenOutBatch(outs)

    # ------------------------------------------------------------------ maintenance
    def flush_cache(self) -> int:
        """Drop the whole prefix cache; returns the pages freed. Only when idle (locked nodes
        cannot go)."""
        assert not self.running, "flush_cache while requests run"
        freed = self.cache.reset()
        self.allocator.free(freed)
        return len(freed)

    def get_stats(self) -> SchedulerStats:
        s = self.stats
        s.running, s.waiting = len(self.running), len(self.waiting)
        s.pages_free = self.allocator.num_free
        s.pages_evictable = self.cache.evictable_pages
        s.pages_protected = self.cache.protected_pages
        return s

    def pages_in_flight(self) -> int:
        """Pages held by running requests that the tree does not own."""
        return sum(len(r.pages) - r.cached_len // self.ps for r in self.running)

    def check_integrity(self) -> None:
        """free + evictable + protected + in-flight == total (tests call this)."""
        self.cache.check_integrity()
        total = (self.allocator.num_free + self.cache.evictable_pages
                 + self.cache.protected_pages + self.pages_in_flight())
        assert total == self.num_pages, (
            f"page leak: free {self.allocator.num_free} + evictable {self.cache.evictable_pages}"
            f" + protected {self.cache.protected_pages} + in-flight {self.pages_in_flight()}"
            f" != total {self.num_pages}")
