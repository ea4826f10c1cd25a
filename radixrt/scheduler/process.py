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
    GenerateReq,
    SchedulerWorkerMsg,
    StatsReq,
    StepResult,
    TokenizerSchedulerMsg,
    WorkerReady,
)
from radixrt.ipc.sockets import Endpoints, PullQueue, PushQueue
from radixrt.model_info import ModelInfo
from radixrt.process_group import report
from radixrt.scheduler.scheduler import Scheduler

logger = logging.getLogger("radixrt")


class SchedulerLoop:
    """The Scheduler's process loop: take messages, run a step on the worker(s), send outputs.

    It blocks on its inbox while there is no work; a flush waits until no request runs.
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
        s = self.sched
        self.handle = Dispatcher("scheduler", {
            GenerateReq: s.add_request,
            AbortReq: lambda m: s.abort(m.rid),
            StatsReq: lambda m: self.to_tokenizer.put(s.get_stats()),
            FlushCacheReq: self._request_flush,
        })

    def _request_flush(self, msg: FlushCacheReq) -> None:
        self.flush_pending += 1

    def _flush_when_idle(self) -> None:
        if self.flush_pending and not self.sched.running:
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
            if not s.has_work and not self.flush_pending:
                self.handle(self.inbox.get())
            for msg in self.inbox.drain():
                self.handle(msg)
            self._flush_when_idle()
            batch = s.schedule()
            if batch is None:
                out = s.collect_outputs()
                if (s.waiting or s.grammar.pending) and not s.running:
                    # Nothing runnable right now (memory, or grammars compiling in their
                    # thread): wait for news instead of spinning.
                    if (msg := self._poll(5)) is not None:
                        self.handle(msg)
            else:
                t0 = time.perf_counter()
                for w in self.workers:
                    w.put(batch)
                result = self.from_worker.get()
                assert isinstance(result, StepResult) and result.step == batch.step
                s.stats.ipc_seconds += time.perf_counter() - t0 - result.forward_seconds
                out = s.process_result(result)
            if out.outs:
                self.to_tokenizer.put(out)


def run_scheduler(endpoints: Endpoints, name: str, config: EngineConfig, info: ModelInfo,
                  worker: WorkerReady) -> None:
    logging.basicConfig(level=config.log_level.upper(),
                        format=f"[%(asctime)s {name}] %(message)s", datefmt="%H:%M:%S")
    loop = SchedulerLoop(endpoints, config, info, worker)
    report(endpoints, ChildReady(name))
    loop.run()
