"""Scheduler process: the Scheduler behind ZeroMQ. Blocks on its sockets when idle."""

from __future__ import annotations

import logging
import time

import zmq

from radixrt.config import EngineConfig
from radixrt.ipc.dispatch import Dispatcher
from radixrt.ipc.messages import (
    AbortReq,
    ChildReady,
    FlushCacheDone,
    FlushCacheReq,
    ForwardBatch,
    GenerateReq,
    PingReq,
    Pong,
    SchedulerWorkerMsg,
    StatsReq,
    StepResult,
    TokenizerSchedulerMsg,
    WorkerReady,
)
from radixrt.ipc.sockets import Endpoints, PullQueue, PushQueue
from radixrt.log import setup_logging
from radixrt.model_info import ModelInfo
from radixrt.process_group import report
from radixrt.scheduler.pipeline import StepPipeline
from radixrt.scheduler.scheduler import Scheduler

logger = logging.getLogger("radixrt")


class SchedulerLoop:
    """The Scheduler's process loop: take messages, run a step on the worker(s), send outputs.

    It blocks on its inbox while there is no work. While the worker runs a step it answers
    pings (holding other messages for after the step), so /health can tell a slow step from a
    stuck stage. A flush that may wait waits until no request runs; one that may not frees
    what no running request holds and says so.
    """

    def __init__(self, endpoints: Endpoints, config: EngineConfig, info: ModelInfo,
                 worker: WorkerReady) -> None:
        self.sched = Scheduler(config, info, worker.num_pages)
        ctx = zmq.Context.instance()
        self.inbox = PullQueue(ctx, endpoints.to_scheduler, bind=True, hop=TokenizerSchedulerMsg)
        self.to_tokenizer = PushQueue(ctx, endpoints.to_detokenizer, bind=False,
                                      hop=TokenizerSchedulerMsg)
        self.workers = [PushQueue(ctx, endpoints.to_worker(r), bind=False, hop=SchedulerWorkerMsg)
                        for r in range(config.tp_size)]
        self.from_worker = PullQueue(ctx, endpoints.from_worker, bind=True,
                                     hop=SchedulerWorkerMsg)
        self.flush_pending = 0  # FlushCacheReqs not answered yet
        self.held: list[object] = []  # arrived during a step, handled after it
        self.poller = zmq.Poller()
        self.poller.register(self.inbox.sock, zmq.POLLIN)
        self.poller.register(self.from_worker.sock, zmq.POLLIN)
        self.pipeline = StepPipeline(self.sched, config.overlap_schedule, self._send,
                                     self._receive)
        s = self.sched
        self.handle = Dispatcher("scheduler", {
            GenerateReq: s.add_request,
            AbortReq: lambda m: s.abort(m.rid),
            StatsReq: lambda m: self.to_tokenizer.put(s.get_stats()),
            FlushCacheReq: self._request_flush,
            PingReq: lambda m: self.to_tokenizer.put(Pong("scheduler", m.seq)),
        })

    def _request_flush(self, msg: FlushCacheReq) -> None:
        if msg.wait_for_idle or not self.sched.running:
            self.flush_pending += 1
            return
        freed = self.sched.kv.evict_unlocked()
        self.to_tokenizer.put(FlushCacheDone(freed, flushed=False,
                                             running=len(self.sched.running)))

    def _send(self, batch: ForwardBatch) -> None:
        for w in self.workers:
            w.put(batch)

    def _receive(self) -> StepResult:
        result = self._await_result()
        assert isinstance(result, StepResult)
        return result

    def _flush_when_idle(self) -> None:
        if self.flush_pending and not self.sched.running and not self.sched.steps_in_flight:
            freed = self.sched.flush_cache()
            for _ in range(self.flush_pending):
                self.to_tokenizer.put(FlushCacheDone(freed))
            self.flush_pending = 0

    def _poll(self, timeout_ms: int) -> object | None:
        try:
            return self.inbox.get(timeout_ms)
        except TimeoutError:
            return None

    def run(self) -> None:
        s = self.sched
        while True:
            # Block when idle; otherwise take whatever arrived during the last step.
            if not s.has_work and not self.flush_pending and not self.held:
                self.handle(self.inbox.get())
            held, self.held = self.held, []
            for msg in held + self.inbox.drain():
                self.handle(msg)
            self._flush_when_idle()
            out = self.pipeline.step()
            if ((s.waiting or s.grammar.pending) and not s.running
                    and not s.steps_in_flight):
                # Nothing runnable right now (memory, or grammars compiling in their
                # thread): wait for news instead of spinning.
                if (msg := self._poll(5)) is not None:
                    self.handle(msg)
            if out.outs:
                self.to_tokenizer.put(out)

    def _await_result(self) -> StepResult:
        """The worker's StepResult; pings are answered meanwhile, other messages held."""
        started = time.monotonic()
        while True:
            events = dict(self.poller.poll())
            if self.from_worker.sock in events:
                return self.from_worker.get()
            for msg in self.inbox.drain():
                if isinstance(msg, PingReq):
                    self.to_tokenizer.put(Pong("scheduler", msg.seq,
                                               time.monotonic() - started))
                else:
                    self.held.append(msg)


def run_scheduler(endpoints: Endpoints, name: str, config: EngineConfig, info: ModelInfo,
                  worker: WorkerReady) -> None:
    setup_logging(config.log_level, name)
    loop = SchedulerLoop(endpoints, config, info, worker)
    report(endpoints, ChildReady(name))
    loop.run()
