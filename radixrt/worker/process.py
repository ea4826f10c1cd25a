"""Worker process: owns the model, the KV pool and the cores; runs one ForwardBatch at a time."""

from __future__ import annotations

import logging

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
from radixrt.worker.model_runner import ModelRunner
from radixrt.worker.tp import init_tensor_parallel, rank_config

logger = logging.getLogger("radixrt")


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

    def forward(batch: ForwardBatch) -> None:
        result = runner.step(batch)
        if rank == 0:  # every rank runs the step; one answers
            outbox.put(result)

    dispatch = Dispatcher(name, {ForwardBatch: forward})
    report(endpoints, WorkerReady(name, rank, runner.num_pages, runner.page_size,
                                  config.device, config.dtype))
    while True:
        dispatch(inbox.get())
