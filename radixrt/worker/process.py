"""Worker process: owns the model, the KV pool and the cores; runs one ForwardBatch at a time."""

from __future__ import annotations

import logging
import time

import torch
import zmq

from radixrt.config import EngineConfig
from radixrt.ipc.dispatch import Dispatcher
from radixrt.ipc.messages import ForwardBatch, SchedulerWorkerMsg, WorkerReady
from radixrt.ipc.sockets import Endpoints, PullQueue, PushQueue
from radixrt.log import setup_logging
from radixrt.model_info import ModelInfo
from radixrt.models.config import ModelConfig
from radixrt.process_group import report
from radixrt.worker.launched import LaunchedStep
from radixrt.worker.model_runner import ModelRunner
from radixrt.worker.tp import init_tensor_parallel, rank_config

logger = logging.getLogger("radixrt")


class WorkerLoop:
    """Takes ForwardBatches, launches them and answers with their StepResults (rank 0 only).

    With `defer` (overlap scheduling on CUDA) a step's result is read back only once the next
    step is launched or the device finished it, so the device never waits for the host copy.
    Otherwise (CPU: the launch already ran the step) each result goes out at once.
    """

    def __init__(self, runner: ModelRunner, inbox: PullQueue, outbox: PushQueue, rank: int,
                 defer: bool) -> None:
        self.runner, self.inbox, self.outbox = runner, inbox, outbox
        self.rank, self.defer = rank, defer
        self.prev: LaunchedStep | None = None
        self.idle_from = time.perf_counter()  # when the device last ran out of work
        self.dispatch = Dispatcher("worker", {ForwardBatch: self.forward})

    def forward(self, batch: ForwardBatch) -> None:
        idle = time.perf_counter() - self.idle_from if self.prev is None else 0.0
        launched = self.runner.launch(batch)
        launched.idle_seconds = idle
        if self.prev is not None:
            self._answer(self.prev)
        self.prev = None
        if self.defer:
            self.prev = launched
        else:
            self._answer(launched)

    def _answer(self, launched: LaunchedStep) -> None:
        result = launched.result()
        self.idle_from = time.perf_counter()
        if self.rank == 0:  # every rank runs the step; one answers
            self.outbox.put(result)

    def run(self) -> None:
        while True:
            if self.prev is None:
                self.dispatch(self.inbox.get())
                continue
            msg = self.inbox.get_nowait()
            if msg is not None:
                self.dispatch(msg)
            elif self.prev.done():
                self._answer(self.prev)
                self.prev = None
            else:
                time.sleep(2e-5)  # the device is busy; poll for the next batch


def run_worker(endpoints: Endpoints, name: str, config: EngineConfig, info: ModelInfo,
               rank: int = 0, dist_port: int | None = None) -> None:
    """Rank `rank` of config.tp_size; dist_port: the ranks' torch.distributed store (tp > 1)."""
    setup_logging(config.log_level, name)
    config = rank_config(config, rank)
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    tp = init_tensor_parallel(config, rank, dist_port)
    runner = ModelRunner(config, ModelConfig.from_info(info), tp)
    ctx = zmq.Context.instance()
    inbox = PullQueue(ctx, endpoints.to_worker(rank), bind=True, hop=SchedulerWorkerMsg)
    outbox = PushQueue(ctx, endpoints.from_worker, bind=False, hop=SchedulerWorkerMsg)
    loop = WorkerLoop(runner, inbox, outbox, rank,
                      defer=config.overlap_schedule and runner.device.type == "cuda")
    report(endpoints, WorkerReady(name, rank, runner.num_pages, runner.page_size,
                                  config.device, config.dtype))
    loop.run()
