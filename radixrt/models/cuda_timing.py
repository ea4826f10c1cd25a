"""Timing a kernel on CUDA as a decode step runs it, for the load-time choices between
kernels (gemv_cuda, gemm_cuda)."""

from __future__ import annotations

from collections.abc import Callable
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


def cold_cycle(weights: list[torch.Tensor], l2_multiple: int = 4) -> list[torch.Tensor]:
    """The fewest of `weights` (in order) that together exceed l2_multiple x the device's L2,
    so a timing cycling through them never finds the next one's bytes still cached: a few
    layers' worth, not all of them, for what costs start-up time."""
    if not weights:
        return weights
    dev = weights[0].device
    l2 = 64 * 2**20
    if dev.type == "cuda":
        l2 = getattr(torch.cuda.get_device_properties(dev), "L2_cache_size", l2) or l2
    out, total = [], 0
    for w in weights:
        out.append(w)
        total += w.numel() * w.element_size()
        if total > l2_multiple * l2 and len(out) >= 2:
            break
    return out



def retime_winner(timer: Callable[[Any, list[torch.Tensor]], float],
                  weights: list[torch.Tensor], baseline: Any, winner: Any, base: float
                  ) -> tuple[float, float]:
    """(the winner's time, the baseline's) for the final comparison of a kernel choice. The
    best of several noisy timings is biased low, so the winner is timed afresh and meets the
    faster of two timings of the baseline (`base`, and one more now): a noise win does not
    swap it in. timer(fn, weights): seconds per call of fn cycling through the weights."""
    base = min(base, timer(baseline, weights))
    return timer(winner, weights), base
