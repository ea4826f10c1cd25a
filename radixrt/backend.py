"""Start the model side of a server or Engine: worker process(es), then the scheduler."""

from __future__ import annotations

from radixrt.config import EngineConfig
from radixrt.ipc.messages import WorkerReady
from radixrt.model_info import ModelInfo
from radixrt.process_group import ProcessGroup


def start_backend(group: ProcessGroup, config: EngineConfig, info: ModelInfo) -> WorkerReady:
    """Start the workers, wait for them (the KV pool size comes from rank 0), then start the
    scheduler. Returns rank 0's WorkerReady."""
    if config.tp_size != 1:
        raise ValueError("tensor parallelism (--tp-size > 1) is not supported yet")
    for rank in range(config.tp_size):
        group.start(f"worker{rank}", "worker", config, info, rank)
    ready = group.wait_ready()["worker0"]
    assert isinstance(ready, WorkerReady)
    group.start("scheduler", "scheduler", config, info, ready)
    return ready
