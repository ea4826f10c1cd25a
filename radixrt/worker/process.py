"""Worker process: owns the model, the KV pool and the cores; runs one ForwardBatch at a time."""

from __future__ import annotations

import logging

import torch
import zmq

from radixrt.config import EngineConfig
from radixrt.ipc.messages import ForwardBatch, Shutdown
from radixrt.ipc.sockets import Endpoints, PullQueue, PushQueue
from radixrt.model_info import ModelInfo
from radixrt.models.config import ModelConfig
from radixrt.process_group import report_ready
from radixrt.worker.model_runner import ModelRunner

logger = logging.getLogger("radixrt")


def run_worker(endpoints: Endpoints, name: str, config: EngineConfig, info: ModelInfo,
               rank: int = 0) -> None:
    logging.basicConfig(level=config.log_level.upper(),
                        format=f"[%(asctime)s {name}] %(message)s", datefmt="%H:%M:%S")
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    runner = ModelRunner(config, ModelConfig.from_info(info))
    ctx = zmq.Context.instance()
    inbox = PullQueue(ctx, endpoints.to_worker(rank), bind=True)
    outbox = PushQueue(ctx, endpoints.from_worker, bind=False)
    report_ready(endpoints, name, num_pages=runner.num_pages, page_size=runner.page_size)
    while True:
        msg = inbox.get()
        if isinstance(msg, Shutdown):
            break
        assert isinstance(msg, ForwardBatch)
        result = runner.step(msg)
        if rank == 0:
            outbox.put(result)
