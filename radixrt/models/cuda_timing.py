"""Timing a kernel on CUDA as a decode step runs it, for the load-time choices between
kernels (gemv_cuda, gemm_cuda)."""

from __future__ import annotations

from typing import Any

import torch


def time_calls(fn: Any, weights: list[torch.Tensor], graphs: bool, reps: int = 3) -> float:
    """Seconds per call, cycling through `weights` (each layer's own). graphs: the calls
    replayed from a CUDA graph, as decode steps run them (a Triton launch from Python costs
    tens of microseconds of host time that a graph does not pay); else launched one by one."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for w in weights[:2]:  # compile, allocate
            fn(w)
    torch.cuda.current_stream().wait_stream(stream)
    graph = None
    if graphs:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream):
            for w in weights:
                fn(w)
        graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        if graph is not None:
            graph.replay()
        else:
            for w in weights:
                fn(w)
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3 / (reps * len(weights))
