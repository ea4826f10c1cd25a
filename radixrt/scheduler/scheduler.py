"""The scheduler: waiting/running queues around a short step loop.

Runs without sockets: `add_request` / `abort` -> `schedule` -> ForwardBatch -> (worker) ->
`process_result` -> TokenOutBatch. The process wrapper in scheduler/process.py adds ZeroMQ.

Every running request is fed `fill_ids[num_computed : num_computed + chunk]` each step: a
decode is a chunk of one token, a prefill is split into chunks under the step's token budget.
The parts: admission.py (who joins), retraction.py (who leaves when pages run out),
kv_manager.py (pages and the prefix cache), batch_builder.py (the ForwardBatch) and
outputs.py (sampled tokens in, TokenOut records out).

Overlap scheduling: `schedule` may run again before the last step's `process_result`. A chunk
advances `num_computed` when it is scheduled, and a sampling chunk adds a pending token
(Request.num_pending) that the next step feeds as a placeholder the worker resolves on its
side; `process_result` takes results in step order and fills the pending tokens in. A request
that finishes at step N may already be in step N+1: that extra token is dropped.
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
    SchedulerStats,
    StepResult,
    TokenOutBatch,
)
from radixrt.model_info import ModelInfo
from radixrt.scheduler.admission import Admission
from radixrt.scheduler.batch_builder import build_batch
from radixrt.scheduler.grammar_hook import GrammarHook
from radixrt.scheduler.kv_manager import KVManager, pages_for
from radixrt.scheduler.outputs import (
    collect,
    finish_reason,
    take_embeddings,
    take_prompt_logprobs,
    take_token,
)
from radixrt.scheduler.page_allocator import PageAllocator
from radixrt.scheduler.policy import SchedulePolicy
from radixrt.scheduler.request import Chunk, ReqState, Request
from radixrt.scheduler.retraction import pick_victim
from radixrt.scheduler.slots import SlotTable

logger = logging.getLogger("radixrt")


def make_cache(config: EngineConfig) -> PrefixCache:
    if config.disable_radix_cache:
        return NoPrefixCache(config.page_size)
    return RadixCache(config.page_size)


class Scheduler:
    """Decides every step what the model computes, and keeps the KV pages and the prefix
    cache consistent with it.

    One step: the running requests continue (decodes always, prefill chunks within the token
    budget; out of pages, the least advanced request is retracted), then waiting requests are
    admitted into what is left of the budget. Request state (ReqState) moves WAITING ->
    RUNNING -> FINISHED, through RETRACTED and back to RUNNING when memory runs out.
    """

    def __init__(self, config: EngineConfig, info: ModelInfo, num_pages: int) -> None:
        self.config = config
        self.num_pages = num_pages
        self.context_length = info.context_length
        self.eos_ids = info.eos_token_ids
        self.stats = SchedulerStats(pages_total=num_pages, page_size=config.page_size)
        self.kv = KVManager(num_pages, config.page_size, make_cache(config))
        self.slots = SlotTable(config.max_running_requests)
        self.admission = Admission(self.kv, self.slots, SchedulePolicy(config.schedule_policy),
                                   info.context_length, self.stats)
        self.grammar = GrammarHook(info.model_path, self.eos_ids, info.vocab_size)
        self.waiting: list[Request] = []
        self.running: list[Request] = []  # admission order
        self.requests: dict[str, Request] = {}
        self.finished: list[Request] = []  # finished since the last TokenOutBatch
        self.step_id = 0
        self._batch: list[Chunk] = []  # being built by schedule()
        self._inflight: deque[tuple[list[Chunk], ForwardBatch]] = deque()  # steps sent

    @property
    def cache(self) -> PrefixCache:
        return self.kv.cache

    @property
    def allocator(self) -> PageAllocator:
        return self.kv.allocator

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running or self.finished or self._inflight
                    or self.grammar.pending)

    @property
    def steps_in_flight(self) -> int:
        """Steps scheduled whose results have not been processed yet."""
        return len(self._inflight)

    # ------------------------------------------------------------------ inputs
    def add_request(self, req: GenerateReq) -> None:
        r = Request(req.rid, np.asarray(req.input_ids, dtype=np.int32), req.sampling,
                    req.cache_salt, embed=req.embed)
        self.requests[r.rid] = r
        r.error = self._refusal(r)
        if r.error is not None:
            self._finish(r, "abort")
        elif self.grammar.admit_or_hold(r):  # else it waits for its grammar to compile
            self.waiting.append(r)

    def _refusal(self, r: Request) -> str | None:
        n = len(r.prompt_ids)
        if n == 0:
            return "the prompt is empty"
        if n + 1 > self.context_length:
            return f"the prompt ({n} tokens) does not fit the context length {self.context_length}"
        if pages_for(n + 1, self.kv.page_size) > self.num_pages:
            return (f"the prompt ({n} tokens) is larger than the KV cache "
                    f"({self.num_pages * self.kv.page_size} tokens)")
        return None

    def abort(self, rid: str) -> None:
        r = self.requests.get(rid)
        if r is not None and not r.finished:
            self._finish(r, "abort")

    # ------------------------------------------------------------------ state changes
    def _finish(self, r: Request, reason: str, matched_stop: int | None = None) -> None:
        if r.running:
            self._stop_running(r)
        elif r in self.waiting:
            self.waiting.remove(r)
        else:
            self.grammar.remove(r)
        r.state, r.finish_reason, r.matched_stop = ReqState.FINISHED, reason, matched_stop
        self.finished.append(r)

    def _fail(self, r: Request, error: str) -> None:
        r.error = error
        self._finish(r, "abort")

    def _stop_running(self, r: Request) -> None:
        """r leaves the running batch: its KV goes to the cache, its slot is freed."""
        self.kv.release(r)
        self.running.remove(r)
        self.slots.release(r.slot)
        r.slot, r.registered = -1, False

    def _retract(self) -> bool:
        """Free the running request with the least progress; it requeues and redoes its
        prefill later (its computed prefix stays in the tree, so the redo is cheap)."""
        victim = pick_victim(self.running, self._batch)
        if victim is None:
            return False
        self._batch = [c for c in self._batch if c.req is not victim]
        self._stop_running(victim)
        victim.state = ReqState.RETRACTED
        victim.num_retractions += 1
        self.stats.retractions += 1
        self.waiting.append(victim)
        self.admission.on_retract()
        logger.debug("retracted %s (%d tokens)", victim.rid, victim.fill_len)
        return True

    # ------------------------------------------------------------------ the step
    def schedule(self) -> ForwardBatch | None:
        """Pick the next step's work. None when there is nothing to run."""
        t0 = time.perf_counter()
        self._batch = []
        self.grammar.poll(self.waiting.append, self._fail)
        budget = self._continue_running(self.config.chunked_prefill_size)
        if self.waiting and budget > 0 and self.slots.available:
            for chunk in self.admission.admit(self.waiting, self.running, budget):
                self.waiting.remove(chunk.req)
                self.running.append(chunk.req)
                self._batch.append(chunk)
        batch = None
        if self._batch:
            self.step_id += 1
            batch = build_batch(self.step_id, self._batch, self.eos_ids, self.slots.take_freed())
            masks = self.grammar.masks(self._batch)  # before num_computed moves on
            if masks is not None:
                batch.mask_rows, batch.mask_bits = masks
            for r, n in self._batch:
                r.num_computed += n
                if r.num_computed == r.fill_len:  # samples: its token is pending until back
                    r.num_pending += 1
            self._inflight.append((self._batch, batch))
        self.stats.tick_seconds += time.perf_counter() - t0
        return batch

    def _continue_running(self, budget: int) -> int:
        """Chunks for the running requests (decodes first, then prefills within budget);
        returns the budget left."""
        for r in sorted(self.running, key=lambda r: not r.is_decoding):
            if not r.running:  # retracted while making room for an earlier one
                continue
            if r.is_decoding and self._ends_pending(r):
                continue  # finishes when its pending token comes back: no step to waste
            n = 1 if r.is_decoding else min(r.remaining, max(budget, 0))
            if n <= 0:
                continue
            ok = self.kv.grow(r, n)
            while not ok and r.running and self._retract():
                ok = r.running and self.kv.grow(r, n)
            if not r.running:
                continue
            if not ok:
                self._finish(r, "length")  # alone, it outgrew the whole pool
                continue
            self._batch.append(Chunk(r, n))
            budget -= n
        return budget

    def _ends_pending(self, r: Request) -> bool:
        """r has a token pending that surely ends it by length (max_new_tokens or context)."""
        return r.num_pending > 0 and (r.max_new_left() <= 0
                                      or r.fill_len >= self.context_length)

    def process_result(self, result: StepResult) -> TokenOutBatch:
        """Take the worker's sampled tokens of the oldest step in flight: advance, finish and
        free requests."""
        t0 = time.perf_counter()
        chunks, batch = self._inflight.popleft()
        step = batch.step
        assert result.step == step, f"result of step {result.step}, expected {step}"
        self.stats.steps += 1
        self.stats.forward_seconds += result.forward_seconds
        if logger.isEnabledFor(logging.DEBUG):  # --log-level debug: what each step held
            logger.debug("step %d: %d one-token chunks (decodes), prefill chunks %s, "
                         "forward %.1f ms, %d waiting", step,
                         sum(1 for c in chunks if c.num_new == 1),
                         [c.num_new for c in chunks if c.num_new > 1],
                         result.forward_seconds * 1e3, len(self.waiting))
        if batch.prompt_lp_num is not None:
            take_prompt_logprobs(chunks, batch.prompt_lp_num, result)
        if batch.embed_of is not None:
            take_embeddings(chunks, batch.embed_of, result)
        for i, (r, n) in enumerate(chunks):
            # A running request takes its token; so does one retracted while this step ran
            # (its token is real). A finished one (aborted, or ended one step earlier) drops it.
            if r.finished or (not r.running and r.num_pending == 0):
                continue
            if result.next_ids[i] >= 0:
                r.num_pending -= 1
                if r.extras is not None and r.sampling.max_new_tokens == 0:  # prefill only
                    self._finish(r, "length")
                    continue
                tok = take_token(r, i, result)
                self.grammar.on_token(r, tok)
                self.stats.generated_tokens += 1
                end = finish_reason(r, tok, self.eos_ids, self.context_length)
                if end is not None:
                    self._finish(r, *end)
                    continue
            if n > 1 and r.running:  # a prefill chunk: its pages can serve others already
                self.kv.share_computed(r)
        self.admission.on_step(self.running)
        out = self.collect_outputs([c.req for c in chunks])
        self.stats.tick_seconds += time.perf_counter() - t0
        return out

    def collect_outputs(self, batch: list[Request] | None = None) -> TokenOutBatch:
        """A TokenOut for each request with new tokens or a new finish since the last call."""
        reqs = (batch or []) + self.finished
        self.finished = []
        for r in reqs:
            if r.finished:
                self.requests.pop(r.rid, None)
        return collect(reqs)

    # ------------------------------------------------------------------ maintenance
    def flush_cache(self) -> int:
        """Drop the whole prefix cache; returns the pages freed. Only when no request runs
        (locked nodes cannot go)."""
        assert not self.running, "flush_cache while requests run"
        return self.kv.flush()

    def get_stats(self) -> SchedulerStats:
        s = self.stats
        s.running, s.waiting = len(self.running), len(self.waiting)
        s.pages_free = self.kv.allocator.num_free
        s.pages_evictable = self.kv.cache.evictable_pages
        s.pages_protected = self.kv.cache.protected_pages
        return s

    def check_integrity(self) -> None:
        """free + evictable + protected + in-flight == total, and every queue holds requests
        in its states (tests call this after every step)."""
        self.kv.check_integrity(self.running)
        assert all(r.state is ReqState.RUNNING for r in self.running)
        assert all(r.state in (ReqState.WAITING, ReqState.RETRACTED) for r in self.waiting)
        assert all(r.state is ReqState.GRAMMAR_PENDING for r in self.grammar.pending)
        assert len({r.slot for r in self.running}) == len(self.running), "a slot used twice"
