"""Graphs for decode steps: capture the model's forward once per batch size, replay it.

A decode step of a small model is launch-bound (hundreds of small kernels, each a few
microseconds of work); a CUDA graph replays them with one launch. The model runner owns one
GraphRunner, whatever the attention backend: the backend's graph hooks (attention/base.py)
plan each captured size into its own fixed buffers, and the runner here keeps the static
inputs (token ids, positions, KV slots, logits rows), picks the size and pads.

A batch of n requests runs in the smallest captured size bs >= n; rows n..bs-1 are padding:
position 0 of a one-token request on the pool's scratch page, whose logits are sliced off.
The model runner pads on the host, before the step's one upload (pad_decode_rows), so a
replay adds only three small copies into the static inputs and the backend's plan.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from radixrt.attention.base import AttentionBackend, AttentionMetadata, build_metadata

if TYPE_CHECKING:
    from radixrt.config import EngineConfig
    from radixrt.worker.model_runner import ModelRunner

logger = logging.getLogger("radixrt")

SMALL_BATCH_SIZES = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128)
# Records fn into a graph: returns (graph with .replay(), static output of fn).
Recorder = Callable[[Callable[[], torch.Tensor]], tuple[Any, torch.Tensor]]


def capture_batch_sizes(max_bs: int) -> list[int]:
    """Sizes to capture: dense where decode batches usually are, sparser beyond 128.

    Padding wastes at most a third of a step below 128 and 1/4 above; `max_bs` itself is
    always captured so every admissible batch has a graph.
    """
    if max_bs < 1:
        return []
    sizes = [s for s in SMALL_BATCH_SIZES if s <= max_bs]
    nxt = 192
    while nxt <= max_bs:
        sizes.append(nxt)
        nxt += 64
    if sizes[-1] != max_bs:
        sizes.append(max_bs)
    return sizes


def pad_decode_rows(start_pos: np.ndarray, page_rows: np.ndarray, bs: int, scratch_page: int
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(start_pos, num_new, page_rows) of a decode batch padded to bs rows on the host, before
    the step's one upload (so padding costs no kernels): padding rows are one-token requests
    at position 0 of the scratch page."""
    n = len(start_pos)
    if bs < n:
        raise ValueError(f"cannot pad a batch of {n} down to {bs}")
    width = max(page_rows.shape[1], 1)
    rows = np.full((bs, width), scratch_page, dtype=np.int32)
    rows[:n, : page_rows.shape[1]] = page_rows
    start = np.zeros(bs, dtype=np.int64)
    start[:n] = start_pos
    return start, np.ones(bs, dtype=np.int64), rows


def record_cuda_graph(device: torch.device) -> Recorder:
    """A Recorder capturing CUDA graphs on a side stream, all in one memory pool."""
    stream = torch.cuda.Stream(device=device)
    mempool = torch.cuda.graph_pool_handle()

    def record(fn: Callable[[], torch.Tensor]) -> tuple[Any, torch.Tensor]:
        # Warm up off the default stream first (lazy inits, allocator), then capture.
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream):
            for _ in range(2):
                fn()
        torch.cuda.current_stream(device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=mempool, stream=stream):
            out = fn()
        return graph, out

    return record


class GraphRunner:
    """Captured decode forwards of one model + attention backend, one graph per batch size.

    The static inputs are shared by every graph (one replays at a time); `record` makes the
    graphs (CUDA graphs by default; tests pass an eager stand-in to check the bookkeeping on
    a CPU).
    """

    def __init__(self, model: torch.nn.Module, attn: AttentionBackend, device: torch.device,
                 batch_sizes: list[int], page_size: int, scratch_page: int,
                 max_pages_per_req: int, record: Recorder | None = None) -> None:
        self.model, self.attn, self.device = model, attn, device
        self.batch_sizes = sorted(batch_sizes)
        self.max_bs = self.batch_sizes[-1] if self.batch_sizes else 0
        self.page_size, self.scratch_page = page_size, scratch_page
        B = self.max_bs
        with torch.inference_mode():
            self.input_ids = torch.zeros(B, dtype=torch.int64, device=device)
            self.positions = torch.zeros(B, dtype=torch.int64, device=device)
            self.out_slots = torch.full((B,), scratch_page * page_size, dtype=torch.int64,
                                        device=device)
            self.logits_rows = torch.arange(B, dtype=torch.int64, device=device)
        self.graphs: dict[int, Any] = {}
        self.outputs: dict[int, torch.Tensor] = {}
        self.replays = 0
        self.capture_seconds = 0.0
        if self.batch_sizes:
            attn.init_capture(B, max_pages_per_req)
            self.capture(record or record_cuda_graph(device))

    def _static(self, meta: AttentionMetadata) -> AttentionMetadata:
        """meta (padded to a captured size) with its KV slots in the static buffer the graphs
        read."""
        bs = meta.batch_size
        self.out_slots[:bs].copy_(meta.out_slots, non_blocking=True)
        return dataclasses.replace(meta, out_slots=self.out_slots[:bs])

    @torch.inference_mode()
    def capture(self, record: Recorder) -> None:
        t0 = time.perf_counter()
        logger.info("capturing decode graphs at batch sizes %s ...", self.batch_sizes)
        # Largest first, so smaller graphs reuse the memory the largest one sized.
        for bs in reversed(self.batch_sizes):
            self.input_ids[:bs].zero_()
            self.positions[:bs].zero_()
            start, num_new, rows = pad_decode_rows(np.zeros(0, np.int64),
                                                   np.zeros((0, 1), np.int32), bs,
                                                   self.scratch_page)
            meta, _ = build_metadata(start, num_new, rows, self.page_size, self.device)
            self.attn.prepare_for_capture(self._static(meta))
            fn = functools.partial(self.model, self.input_ids[:bs], self.positions[:bs],
                                   self.attn, self.logits_rows[:bs])
            self.graphs[bs], self.outputs[bs] = record(fn)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.capture_seconds = time.perf_counter() - t0
        logger.info("captured %d graphs (batch sizes %s) in %.1f s", len(self.graphs),
                    self.batch_sizes, self.capture_seconds)

    def padded_size(self, num_new: np.ndarray) -> int | None:
        """The captured size a batch with these new-token counts runs in; None: not a decode
        batch a graph can take (it runs eagerly)."""
        n = len(num_new)
        if not 0 < n <= self.max_bs or int(num_new.max()) != 1:
            return None
        return self.pick_batch_size(n)

    def pick_batch_size(self, n: int) -> int:
        for bs in self.batch_sizes:
            if bs >= n:
                return bs
        raise ValueError(f"no graph for batch size {n} (largest {self.max_bs})")

    @torch.inference_mode()
    def replay(self, meta: AttentionMetadata, input_ids: torch.Tensor, positions: torch.Tensor,
               logits_idx: torch.Tensor, leading_rows: int | None = None) -> torch.Tensor:
        """Logits rows logits_idx of a decode batch already padded (pad_decode_rows) to a
        captured size: meta, input_ids and positions have that many rows. leading_rows=n:
        logits_idx is 0..n-1 (every real row samples), and the result is a view of the
        graph's output, valid until the next replay (no gather: at batch 128 of a 128k
        vocabulary that copy reads and writes 33 MB each)."""
        bs = meta.batch_size
        if bs not in self.graphs:
            raise ValueError(f"no graph for batch size {bs} (captured {self.batch_sizes})")
        self.input_ids[:bs].copy_(input_ids, non_blocking=True)
        self.positions[:bs].copy_(positions, non_blocking=True)
        self.attn.prepare_for_replay(self._static(meta))
        self.graphs[bs].replay()
        self.replays += 1
        if leading_rows is not None:
            return self.outputs[bs][:leading_rows]
        # The static output is overwritten by the next replay: indexing copies.
        return self.outputs[bs][logits_idx]


def graph_batch_sizes(config: EngineConfig) -> list[int]:
    """The batch sizes a model runner with this config captures decode graphs at."""
    return capture_batch_sizes(min(config.cuda_graph_max_bs, config.max_running_requests))


def create_graph_runner(runner: ModelRunner, record: Recorder | None = None
                        ) -> GraphRunner | None:
    """The model runner's graph runner, or None where graphs do not apply (not CUDA unless a
    recorder is given, a backend without capturable forward, --disable-cuda-graph)."""
    cfg = runner.config
    if cfg.disable_cuda_graph:
        return None
    if record is None and (runner.device.type != "cuda" or not runner.attn.supports_cuda_graph):
        return None
    sizes = graph_batch_sizes(cfg)
    return GraphRunner(runner.model, runner.attn, runner.device, sizes, runner.page_size,
                       runner.pool.scratch_page, runner.max_pages_per_req, record)
