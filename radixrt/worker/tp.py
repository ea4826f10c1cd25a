"""Tensor-parallel set-up of one worker rank: torch.distributed, its device and its threads.

The starting process picks a free loopback port (radixrt/backend.py) and gives it to every
rank; rank 0 hosts the TCP store there and the others connect to it. gloo on CPU, NCCL on
CUDA, where rank r drives cuda:r. Every rank is a worker process on this one machine, so the
collectives go over loopback (CPU) or NVLink/PCIe (CUDA).
"""

from __future__ import annotations

import datetime
import logging
import os

from radixrt.config import EngineConfig
from radixrt.ipc.sockets import Endpoints
from radixrt.model_info import ModelInfo
from radixrt.models.parallel import TensorParallel
from radixrt.process_group import PEER_LOST_EXIT

logger = logging.getLogger("radixrt")

# A rank that waits longer than this in a collective gives up (a peer hung rather than died:
# a dead peer closes its sockets and fails the collective at once).
COLLECTIVE_TIMEOUT = datetime.timedelta(minutes=10)


def rank_config(config: EngineConfig, rank: int) -> EngineConfig:
    """This rank's view of the config: its own GPU (decode run eagerly: the NCCL collectives
    are not captured in CUDA graphs), its share of the CPU cores."""
    if config.tp_size == 1:
        return config
    if config.device == "cuda":
        return config.replace(device=f"cuda:{rank}", disable_cuda_graph=True)
    if config.device == "cpu" and config.num_threads is None:
        # N ranks each taking every core would oversubscribe them N times.
        cores = len(os.sched_getaffinity(0))
        return config.replace(num_threads=max(1, cores // config.tp_size))
    return config


def init_tensor_parallel(config: EngineConfig, rank: int, port: int | None) -> TensorParallel:
    """Join the group of config.tp_size ranks (blocks until all joined); size 1: nothing."""
    if config.tp_size == 1:
        return TensorParallel()
    if port is None:
        raise ValueError("a tensor-parallel rank needs the store port")
    import torch
    import torch.distributed as dist

    if config.device.startswith("cuda"):
        if torch.cuda.device_count() < config.tp_size:
            raise RuntimeError(f"--tp-size {config.tp_size} needs {config.tp_size} GPUs; "
                               f"{torch.cuda.device_count()} visible")
        torch.cuda.set_device(torch.device(config.device))
        backend = "nccl"
    elif config.device == "cpu":
        backend = "gloo"
    else:
        raise ValueError(f"tensor parallelism runs on cpu or cuda, not {config.device}")
    # All ranks live on this machine: keep gloo's and NCCL's own sockets on loopback too.
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    os.environ.setdefault("NCCL_SOCKET_IFNAME", "lo")
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=config.tp_size, timeout=COLLECTIVE_TIMEOUT)
    return TensorParallel(rank, config.tp_size)


def peer_lost(exc: BaseException) -> bool:
    """Whether exc is a collective failing because another rank went away (gloo raises a
    plain RuntimeError naming its transport; NCCL a DistError)."""
    import torch.distributed as dist

    text = str(exc)
    return isinstance(exc, dist.DistError) or "gloo" in text or "NCCL" in text


def run_rank(endpoints: Endpoints, name: str, config: EngineConfig, info: ModelInfo,
             rank: int = 0, dist_port: int | None = None) -> None:
    """The worker process's entry (radixrt/worker/__main__.py): run_worker, and when a
    collective fails because a peer rank died, one log line and PEER_LOST_EXIT instead of a
    traceback: that peer is the cause, and the parent's report names it
    (radixrt/process_group.py)."""
    from radixrt.worker.process import run_worker

    try:
        run_worker(endpoints, name, config, info, rank, dist_port)
    except Exception as exc:
        if config.tp_size > 1 and peer_lost(exc):
            logger.error("%s: a tensor-parallel peer is gone (%s); exiting", name,
                         str(exc).strip().splitlines()[0][:300])
            os._exit(PEER_LOST_EXIT)
        raise
