"""Scheduler process: the Scheduler behind ZeroMQ. Blocks on its sockets when idle."""

from __future__ import annotations

import logging
import time

import zmq

from radixrt.config import EngineConfig
from radixrt.ipc.messages import (
    AbortReq,
    FlushCacheReq,
    GenerateReq,
    Shutdown,
    StatsReq,
    StepResult,
)
from radixrt.ipc.sockets import Endpoints, PullQueue, PushQueue
from radixrt.model_info import ModelInfo
from radixrt.process_group import report_ready
from radixrt.scheduler.scheduler import Scheduler

logger = logging.getLogger("radixrt")


class SchedulerLoop:
    def __init__(self, endpoints: Endpoints, config: EngineConfig, info: ModelInfo,
                 worker_info: dict) -> None:
        self.sched = Scheduler(config, worker_info["num_pages"], info.context_length,
                               info.eos_token_ids, info.vocab_size)
        ctx = zmq.Context.instance()
        self.inbox = PullQueue(ctx, endpoints.to_scheduler, bind=True)
        self.to_detok = PushQueue(ctx, endpoints.to_detokenizer, bind=False)
        self.workers = [PushQueue(ctx, endpoints.to_worker(r), bind=False)
                        for r in range(config.tp_size)]
        self.from_worker = PullQueue(ctx, endpoints.from_worker, bind=True)
        self.flush_pending = False

    def handle(self, msg: object) -> None:
        s = self.sched
        if isinstance(msg, GenerateReq):
            s.add_request(msg)
        elif isinstance(msg, AbortReq):
            s.abort(msg.rid)
        elif isinstance(msg, StatsReq):
            self.to_detok.put(s.get_stats())
        elif isinstance(msg, FlushCacheReq):
            self.flush_pending = True
        elif isinstance(msg, Shutdown):
            raise SystemExit(0)

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
            if self.flush_pending and not s.running:
                s.flush_cache()
                self.flush_pending = False
                self.to_detok.put(FlushCacheReq())
            batch = s.schedule()
            if batch is None:
                out = s.collect_outputs()
                if s.waiting and not s.running:
                    # Nothing runnable right now: wait for news instead of spinning.
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
            if out.rids:
                self.to_detok.put(out)


def run_scheduler(endpoints: Endpoints, name: str, config: EngineConfig, info: ModelInfo,
                  worker_info: dict) -> None:
    logging.basicConfig(level=config.log_level.upper(),
                        format=f"[%(asctime)s {name}] %(message)s", datefmt="%H:%M:%S")
    loop = SchedulerLoop(endpoints, config, info, worker_info)
    report_ready(endpoints, name, **worker_info)
    loop.run()
