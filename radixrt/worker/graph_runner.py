"""Graphs for decode steps: capture the model's forward once per batch size, replay it.

A decode step of a small model is launch-bound (hundreds of small kernels, each a few
microseconds of work); a CUDA graph replays them with one launch. The model runner owns one
GraphRunner, whatever the attention backend: the backend's graph hooks (attention/base.py)
plan each captured size into its own fixed buffers, and the runner here keeps the static
inputs (token ids, positions, KV slots, logits rows), picks the size and pads.

A batch of n requests runs in the smallest captured size bs >= n; rows n..bs-1 are padding:
position 0 of a one-token request on the pool's scratch page, whose logits are sliced off.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from radixrt.attention.base import AttentionBackend, AttentionMetadata

if TYPE_CHECKING:
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


def pad_decode_meta(meta: AttentionMetadata | None, bs: int, page_size: int,
                    scratch_page: int, out_slots: torch.Tensor) -> AttentionMetadata:
    """meta (a decode batch; None: an empty one) padded to bs rows, with its KV slots copied
    into the static buffer `out_slots` (>= bs long), whose first bs entries the result uses.
    Padding rows are one-token requests at position 0 of the scratch page."""
    n = meta.batch_size if meta is not None else 0
    if bs < n:
        raise ValueError(f"cannot pad a batch of {n} down to {bs}")
    if meta is not None and not meta.is_decode:
        raise ValueError("only decode batches run in graphs")
    dev, i32, pad = out_slots.device, torch.int32, bs - n
    width = max(meta.page_table.shape[1] if meta is not None else 0, 1)
    table = torch.full((bs, width), scratch_page, dtype=i32, device=dev)
    start = torch.zeros(bs, dtype=i32, device=dev)
    if meta is not None and n:
        table[:n, : meta.page_table.shape[1]] = meta.page_table
        start[:n] = meta.start_pos
        out_slots[:n].copy_(meta.out_slots)
    out_slots[n:bs].fill_(scratch_page * page_size)
    num_new = torch.ones(bs, dtype=i32, device=dev)
    return AttentionMetadata(
        batch_size=bs, start_pos=start, num_new=num_new, seq_lens=start + 1,
        cu_new=torch.arange(bs + 1, dtype=i32, device=dev), page_table=table,
        out_slots=out_slots[:bs], page_size=page_size,
        start_pos_host=(meta.start_pos_host if meta is not None else []) + [0] * pad,
        num_new_host=[1] * bs, is_decode=True,
        max_seq_len=max(meta.max_seq_len if meta is not None else 0, 1))


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

    def _meta(self, meta: AttentionMetadata | None, bs: int) -> AttentionMetadata:
        return pad_decode_meta(meta, bs, self.page_size, self.scratch_page, self.out_slots)

    @torch.inference_mode()
    def capture(self, record: Recorder) -> None:
        t0 = time.perf_counter()
        # Largest first, so smaller graphs reuse the memory the largest one sized.
        for bs in reversed(self.batch_sizes):
            self.input_ids[:bs].zero_()
            self.positions[:bs].zero_()
            self.attn.prepare_for_capture(self._meta(None, bs))
            fn = functools.partial(self.model, self.input_ids[:bs], self.positions[:bs],
                                   self.attn, self.logits_rows[:bs])
            self.graphs[bs], self.outputs[bs] = record(fn)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.capture_seconds = time.perf_counter() - t0
        logger.info("captured %d graphs (batch sizes %s) in %.1f s", len(self.graphs),
                    self.batch_sizes, self.capture_seconds)

    def can_run(self, meta: AttentionMetadata) -> bool:
        return meta.is_decode and 0 < meta.batch_size <= self.max_bs

    def pick_batch_size(self, n: int) -> int:
        for bs in self.batch_sizes:
            if bs >= n:
                return bs
        raise ValueError(f"no graph for batch size {n} (largest {self.max_bs})")

    @torch.inference_mode()
    def replay(self, meta: AttentionMetadata, input_ids: torch.Tensor, positions: torch.Tensor,
               logits_idx: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [n, vocab] of a decode batch (rows logits_idx of them when given)."""
        n = meta.batch_size
        bs = self.pick_batch_size(n)
        self.input_ids[:n].copy_(input_ids, non_blocking=True)
        self.positions[:n].copy_(positions, non_blocking=True)
        self.input_ids[n:bs].zero_()
        self.positions[n:bs].zero_()
        self.attn.prepare_for_replay(self._meta(meta, bs))
        self.graphs[bs].replay()
        self.replays += 1
        out = self.outputs[bs][:n]
        # The static output is overwritten by the next replay: index (a copy) or clone.
        return out[logits_idx] if logits_idx is not None else out.clone()


def create_graph_runner(runner: ModelRunner, record: Recorder | None = None
                        ) -> GraphRunner | None:
    """The model runner's graph runner, or None where graphs do not apply (not CUDA unless a
    recorder is given, a backend without capturable forward, --disable-cuda-graph)."""
    cfg = runner.config
    if cfg.disable_cuda_graph:
        return None
    if record is None and (runner.device.type != "cuda" or not runner.attn.supports_cuda_graph):
        return None
    sizes = capture_batch_sizes(min(cfg.cuda_graph_max_bs, cfg.max_running_requests))
    return GraphRunner(runner.model, runner.attn, runner.device, sizes, runner.page_size,
                       runner.pool.scratch_page, runner.max_pages_per_req, record)
