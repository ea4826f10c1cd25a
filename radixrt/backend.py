"""Start the model side of a server or Engine: worker process(es), then the scheduler."""

from __future__ import annotations

import socket

from radixrt.config import EngineConfig
from radixrt.ipc.messages import WorkerReady
from radixrt.model_info import ModelInfo
from radixrt.models.config import ModelConfig, tp_layout_error
from radixrt.process_group import ProcessGroup, StartupError


def start_backend(group: ProcessGroup, config: EngineConfig, info: ModelInfo) -> WorkerReady:
    """Start the workers, wait for them (the KV pool size comes from rank 0), then start the
    scheduler. Returns rank 0's WorkerReady.

    With --tp-size N the scheduler sends each step to the N ranks over N PUSH sockets (one
    per rank, as the single worker has): ZeroMQ PUB/SUB would drop whatever is published
    before a subscriber has joined and past its high-water mark, while a lost step would
    desynchronise the ranks' collectives. Rank 0 alone answers."""
    if (err := tp_layout_error(ModelConfig.from_info(info), config.tp_size)) is not None:
        raise StartupError(err)  # before any process loads the model
    port = None
    if config.tp_size > 1:
        port = _free_loopback_port()
    for rank in range(config.tp_size):
        group.start(f"worker{rank}", "worker", config, info, rank, port)
    ready = group.wait_ready()["worker0"]
    assert isinstance(ready, WorkerReady)
    group.start("scheduler", "scheduler", config, info, ready)
    return ready


def _free_loopback_port() -> int:
    """A TCP port free on 127.0.0.1 now (the kernel's pick): rank 0 hosts the ranks'
    torch.distributed store there."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
