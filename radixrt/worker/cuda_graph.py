"""CUDA graphs for decode steps: capture the whole model forward once per batch size, replay.

A decode step of a small model is launch-bound (hundreds of small kernels, each a few
microseconds of work); a graph replays them with one launch. Each captured size owns a
FlashInfer decode wrapper in CUDA-graph mode whose page lists live in fixed buffers: before a
replay, plan() (host work plus small copies) rewrites those buffers, and the graph reads them.

A batch of n requests runs in the smallest captured size bs >= n; rows n..bs-1 are padding
that read and write only the pool's scratch page, and their logits are sliced off.

Integration (ModelRunner): build one with `create_cuda_graph_runner(runner)` after the model,
pool and attention backend exist; in forward(), when `graphs.can_run(meta)`, return
`graphs.replay(meta, input_ids, positions, logits_idx)` instead of planning and running the
model eagerly. `graph_forward` below is that forward, for callers that hold a runner without
the hook.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from radixrt.attention.base import AttentionBackend, AttentionMetadata
from radixrt.attention.flashinfer_backend import (
    WORKSPACE_BYTES,
    PagedKVInputs,
    build_paged_kv_inputs,
    import_flashinfer,
    use_tensor_cores,
)

if TYPE_CHECKING:
    from radixrt.ipc.messages import ForwardBatch
    from radixrt.kvcache.pool import KVPool
    from radixrt.worker.model_runner import ModelRunner

logger = logging.getLogger("radixrt")

SMALL_BATCH_SIZES = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128)


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


def pad_decode_inputs(inputs: PagedKVInputs, bs: int, scratch_page: int) -> PagedKVInputs:
    """Extend a decode batch's CSR lists to bs rows; each padding row reads one scratch slot."""
    n = len(inputs.kv_last_page_len)
    if bs < n:
        raise ValueError(f"cannot pad a batch of {n} down to {bs}")
    pad = bs - n
    if pad == 0:
        return inputs
    last = int(inputs.kv_indptr[-1])
    kv_indptr = torch.cat([inputs.kv_indptr,
                           torch.arange(last + 1, last + pad + 1, dtype=torch.int32)])
    qo_last = int(inputs.qo_indptr[-1])
    qo_indptr = torch.cat([inputs.qo_indptr,
                           torch.arange(qo_last + 1, qo_last + pad + 1, dtype=torch.int32)])
    kv_indices = torch.cat([inputs.kv_indices,
                            torch.full((pad,), scratch_page, dtype=torch.int32,
                                       device=inputs.kv_indices.device)])
    kv_last_page_len = torch.cat([inputs.kv_last_page_len, torch.ones(pad, dtype=torch.int32)])
    return PagedKVInputs(qo_indptr, kv_indptr, kv_indices, kv_last_page_len)


class _GraphDecodeAttention(AttentionBackend):
    """The attention the captured forward calls: static slot buffer, pre-planned wrapper."""

    def __init__(self, pool: KVPool, wrapper: Any, out_slots: torch.Tensor) -> None:
        self.pool = pool
        self.wrapper = wrapper
        self.out_slots = out_slots

    def plan(self, meta: AttentionMetadata) -> None:  # planned by CudaGraphRunner.replay
        pass

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer_id: int
                ) -> torch.Tensor:
        self.pool.write(layer_id, self.out_slots, k, v)
        kv = (self.pool.k_pages(layer_id), self.pool.v_pages(layer_id))
        return self.wrapper.run(q.contiguous(), kv)


class CudaGraphRunner:
    """Captured decode forwards of one ModelRunner, one graph per batch size."""

    def __init__(self, runner: ModelRunner, batch_sizes: list[int] | None = None) -> None:
        fi = import_flashinfer()
        cfg, m = runner.config, runner.model_cfg
        self.model = runner.model
        self.pool = runner.pool
        self.device = runner.device
        self.dtype = runner.pool.dtype
        self.page_size = runner.pool.shape.page_size
        self.num_qo_heads = m.num_heads
        self.num_kv_heads = runner.pool.shape.num_kv_heads
        self.head_dim = runner.pool.shape.head_dim
        self.sm_scale = self.head_dim**-0.5
        self.scratch_page = runner.pool.scratch_page
        max_bs = min(cfg.cuda_graph_max_bs, cfg.max_running_requests)
        self.batch_sizes = sorted(batch_sizes or capture_batch_sizes(max_bs))
        self.max_bs = self.batch_sizes[-1] if self.batch_sizes else 0
        self.tensor_cores = use_tensor_cores(self.num_qo_heads, self.num_kv_heads)
        workspace = getattr(runner.attn, "workspace", None)
        self.workspace = (workspace if workspace is not None else
                          torch.zeros(WORKSPACE_BYTES, dtype=torch.uint8, device=self.device))
        dev, B = self.device, self.max_bs
        with torch.inference_mode():
            # Static inputs shared by every graph (one replays at a time).
            self.input_ids = torch.zeros(B, dtype=torch.int64, device=dev)
            self.positions = torch.zeros(B, dtype=torch.int64, device=dev)
            self.out_slots = torch.full((B,), self.scratch_page * self.page_size,
                                        dtype=torch.int64, device=dev)
            self.logits_rows = torch.arange(B, dtype=torch.int64, device=dev)
            self.kv_indptr = torch.arange(B + 1, dtype=torch.int32, device=dev)
            self.kv_indices = torch.full((B * runner.max_pages_per_req,), self.scratch_page,
                                         dtype=torch.int32, device=dev)
            self.kv_last_page_len = torch.ones(B, dtype=torch.int32, device=dev)
        self.wrappers: dict[int, Any] = {}
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[int, torch.Tensor] = {}
        self._fi = fi
        self._stream: Any = None
        self._mempool: Any = None
        self.capture_seconds = 0.0
        if self.batch_sizes:
            self.capture()

    # ------------------------------------------------------------------ capture
    def _plan(self, bs: int, inputs: PagedKVInputs) -> None:
        self.wrappers[bs].plan(
            inputs.kv_indptr, inputs.kv_indices, inputs.kv_last_page_len,
            self.num_qo_heads, self.num_kv_heads, self.head_dim, self.page_size,
            q_data_type=self.dtype, kv_data_type=self.dtype, sm_scale=self.sm_scale)

    def _dummy_inputs(self, bs: int) -> PagedKVInputs:
        empty = PagedKVInputs(torch.zeros(1, dtype=torch.int32), torch.zeros(1, dtype=torch.int32),
                              torch.zeros(0, dtype=torch.int32, device=self.device),
                              torch.zeros(0, dtype=torch.int32))
        return pad_decode_inputs(empty, bs, self.scratch_page)

    @torch.inference_mode()
    def capture(self) -> None:
        t0 = time.perf_counter()
        # Largest first, so smaller graphs reuse the memory pool the largest one sized.
        for bs in reversed(self.batch_sizes):
            self.wrappers[bs] = self._fi.BatchDecodeWithPagedKVCacheWrapper(
                self.workspace, "NHD", use_cuda_graph=True, use_tensor_cores=self.tensor_cores,
                paged_kv_indptr_buffer=self.kv_indptr[: bs + 1],
                paged_kv_indices_buffer=self.kv_indices,
                paged_kv_last_page_len_buffer=self.kv_last_page_len[:bs])
            self._plan(bs, self._dummy_inputs(bs))
            attn = _GraphDecodeAttention(self.pool, self.wrappers[bs], self.out_slots[:bs])
            fn = functools.partial(self.model, self.input_ids[:bs], self.positions[:bs], attn,
                                   self.logits_rows[:bs])
            self.graphs[bs], self.outputs[bs] = self._record(fn)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.capture_seconds = time.perf_counter() - t0
        logger.info("captured %d CUDA graphs (batch sizes %s) in %.1f s", len(self.graphs),
                    self.batch_sizes, self.capture_seconds)

    def _record(self, fn: Callable[[], torch.Tensor]) -> tuple[Any, torch.Tensor]:
        """Warm fn up off the default stream (lazy inits, allocator), then capture it."""
        if self._stream is None:
            self._stream = torch.cuda.Stream(device=self.device)
            self._mempool = torch.cuda.graph_pool_handle()
        stream = self._stream
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for _ in range(2):
                fn()
        torch.cuda.current_stream(self.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._mempool, stream=stream):
            out = fn()
        return graph, out

    # ------------------------------------------------------------------ replay
    def can_run(self, meta: AttentionMetadata) -> bool:
        return meta.is_decode and 0 < meta.batch_size <= self.max_bs

    def pick_batch_size(self, n: int) -> int:
        for bs in self.batch_sizes:
            if bs >= n:
                return bs
        raise ValueError(f"no CUDA graph for batch size {n} (largest {self.max_bs})")

    @torch.inference_mode()
    def replay(self, meta: AttentionMetadata, input_ids: torch.Tensor, positions: torch.Tensor,
               logits_idx: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [n, vocab] of a decode batch (rows logits_idx of them when given)."""
        n = meta.batch_size
        bs = self.pick_batch_size(n)
        self.input_ids[:n].copy_(input_ids, non_blocking=True)
        self.positions[:n].copy_(positions, non_blocking=True)
        self.out_slots[:n].copy_(meta.out_slots, non_blocking=True)
        if bs > n:
            self.input_ids[n:bs].zero_()
            self.positions[n:bs].zero_()
            self.out_slots[n:bs].fill_(self.scratch_page * self.page_size)
        self._plan(bs, pad_decode_inputs(build_paged_kv_inputs(meta), bs, self.scratch_page))
        self.graphs[bs].replay()
        out = self.outputs[bs][:n]
        # The static output is overwritten by the next replay: index (a copy) or clone.
        return out[logits_idx] if logits_idx is not None else out.clone()


def create_cuda_graph_runner(runner: ModelRunner) -> CudaGraphRunner | None:
    """The runner's graph runner, or None where graphs do not apply (CPU, torch attention,
    --disable-cuda-graph)."""
    cfg = runner.config
    if (cfg.disable_cuda_graph or runner.device.type != "cuda"
            or cfg.attention_backend != "flashinfer"):
        return None
    return CudaGraphRunner(runner)


def graph_forward(runner: ModelRunner, graphs: CudaGraphRunner | None, batch: ForwardBatch
                  ) -> torch.Tensor:
    """ModelRunner.forward with the CUDA-graph hook (what the integrated forward does)."""
    meta, positions = runner.build_metadata(batch)
    cu_end = np.cumsum(batch.num_new.astype(np.int64)) - 1
    logits_idx = torch.from_numpy(cu_end[batch.sample]).to(runner.device)
    input_ids = torch.from_numpy(batch.input_ids.astype(np.int64)).to(runner.device)
    if graphs is not None and graphs.can_run(meta):
        return graphs.replay(meta, input_ids, positions, logits_idx)
    runner.attn.plan(meta)
    return runner.model(input_ids, positions, runner.attn, logits_idx)
