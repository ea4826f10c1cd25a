"""Executes one ForwardBatch: page-table updates, attention planning, forward, sampling."""

from __future__ import annotations

import logging
import time

import numpy as np
import torch

from radixrt.attention.base import AttentionBackend, AttentionMetadata
from radixrt.config import EngineConfig, torch_dtype
from radixrt.ipc.messages import ForwardBatch, StepResult
from radixrt.kvcache.pool import KVPool, KVPoolShape
from radixrt.model_info import resolve_context_length
from radixrt.models.config import ModelConfig
from radixrt.models.loader import load_model
from radixrt.worker.sampler import Sampler

logger = logging.getLogger("radixrt")


def context_length(config: EngineConfig, model_cfg: ModelConfig) -> int:
    return resolve_context_length(config.context_length, model_cfg.max_position_embeddings)


def max_slots(config: EngineConfig) -> int:
    return config.max_running_requests


def size_kv_pool(config: EngineConfig, model_cfg: ModelConfig, dtype: torch.dtype,
                 device: torch.device) -> int:
    """Number of KV pages: from --max-total-tokens, else from free memory and --mem-fraction."""
    shape = KVPoolShape(model_cfg.num_layers, 1, config.page_size, model_cfg.num_kv_heads,
                        model_cfg.head_dim)
    per_page = shape.bytes_per_page(dtype)
    if config.max_total_tokens is not None:
        return max(1, -(-config.max_total_tokens // config.page_size))
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        budget = free * config.mem_fraction
    else:
        budget = _cpu_available_bytes() * config.mem_fraction
        # On CPU the pool is host RAM shared with everything else, and a CPU serves a few
        # concurrent requests: keep it to four full contexts (set --max-total-tokens for more).
        ctx = context_length(config, model_cfg)
        budget = min(budget, 4 * ctx * per_page / config.page_size)
    return max(1, int(budget // per_page))


def _cpu_available_bytes() -> float:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 * 2**30


def make_attention_backend(config: EngineConfig, pool: KVPool, model_cfg: ModelConfig
                           ) -> AttentionBackend:
    if config.attention_backend == "torch":
        from radixrt.attention.torch_backend import TorchAttentionBackend

        return TorchAttentionBackend(pool, model_cfg.num_heads, model_cfg.head_dim)
    if config.attention_backend == "flashinfer":
        from radixrt.attention.flashinfer_backend import FlashInferAttentionBackend

        return FlashInferAttentionBackend(pool, model_cfg, config)
    raise ValueError(f"unknown attention backend {config.attention_backend!r}")


class ModelRunner:
    """The worker's engine room: model weights, KV pool, page table of every slot, attention
    backend and sampler. `step(ForwardBatch)` applies the batch's changes, runs the model over
    the flattened tokens and samples the rows that finish their prompt."""

    def __init__(self, config: EngineConfig, model_cfg: ModelConfig | None = None) -> None:
        self.config = config
        self.device = torch.device(config.device)
        self.dtype = torch_dtype(config.dtype)
        self.model_cfg = model_cfg or ModelConfig.from_dir(config.model_path)
        torch.manual_seed(config.seed)
        self.model = load_model(config.model_path, self.dtype, self.device, self.model_cfg)
        num_pages = size_kv_pool(config, self.model_cfg, self.dtype, self.device)
        m = self.model_cfg
        self.pool = KVPool(KVPoolShape(m.num_layers, num_pages, config.page_size,
                                       m.num_kv_heads, m.head_dim), self.dtype, self.device)
        self.page_size = config.page_size
        self.context_length = context_length(config, m)
        self.max_pages_per_req = -(-self.context_length // self.page_size) + 1
        # Page table of every request slot, kept on the host; the scheduler sends only changes.
        self.page_table = np.full((max_slots(config), self.max_pages_per_req),
                                  self.pool.scratch_page, dtype=np.int32)
        self.attn = make_attention_backend(config, self.pool, m)
        self.sampler = Sampler(m.vocab_size, self.device, config.seed)
        logger.info("KV pool: %d pages x %d tokens (%.2f GiB)", num_pages, self.page_size,
                    self.pool.shape.bytes_per_page(self.dtype) * num_pages / 2**30)
        # CUDA graphs for decode (None on CPU, with torch attention, or --disable-cuda-graph).
        from radixrt.worker.cuda_graph import create_cuda_graph_runner

        self.cuda_graph = create_cuda_graph_runner(self)

    @property
    def num_pages(self) -> int:
        return self.pool.shape.num_pages

    def _apply_updates(self, batch: ForwardBatch) -> None:
        for slot in batch.freed_slots:
            self.sampler.remove(slot)
            self.page_table[slot].fill(self.pool.scratch_page)
        for new in batch.new_slots:
            self.sampler.add(new)
        start = 0
        for slot, off, n in zip(batch.page_slots.tolist(), batch.page_offsets.tolist(),
                                batch.page_lens.tolist()):
            self.page_table[slot, off : off + n] = batch.page_ids[start : start + n]
            start += n

    def _grammar_mask(self, batch: ForwardBatch, rows: np.ndarray
                      ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The batch's grammar bitmasks, keyed by position among the sampling rows."""
        if batch.mask_rows is None or not len(batch.mask_rows):
            return None
        pos = np.searchsorted(rows, batch.mask_rows)
        return (torch.as_tensor(pos, dtype=torch.long).to(self.device),
                torch.from_numpy(batch.mask_bits).to(self.device))

    def build_metadata(self, batch: ForwardBatch) -> tuple[AttentionMetadata, torch.Tensor]:
        """Attention metadata and flat positions of one batch (host arrays -> device once)."""
        ps = self.page_size
        num_new = batch.num_new.astype(np.int64)
        start = batch.start_pos.astype(np.int64)
        cu = np.zeros(len(num_new) + 1, dtype=np.int64)
        np.cumsum(num_new, out=cu[1:])
        # Position of every new token: start[i] + 0..num_new[i]-1.
        req_of_tok = np.repeat(np.arange(len(num_new)), num_new)
        positions = start[req_of_tok] + (np.arange(cu[-1]) - cu[req_of_tok])
        seq_lens = start + num_new
        n_pages = int(-(-seq_lens.max() // ps)) if len(seq_lens) else 0
        table = self.page_table[batch.slots][:, :n_pages]
        out_slots = table[req_of_tok, positions // ps].astype(np.int64) * ps + positions % ps
        dev = self.device
        meta = AttentionMetadata(
            batch_size=len(num_new),
            start_pos=torch.from_numpy(start.astype(np.int32)).to(dev),
            num_new=torch.from_numpy(num_new.astype(np.int32)).to(dev),
            seq_lens=torch.from_numpy(seq_lens.astype(np.int32)).to(dev),
            cu_new=torch.from_numpy(cu.astype(np.int32)).to(dev),
            page_table=torch.from_numpy(np.ascontiguousarray(table)).to(dev),
            out_slots=torch.from_numpy(out_slots).to(dev),
            page_size=ps,
            start_pos_host=start.tolist(),
            num_new_host=num_new.tolist(),
            is_decode=bool(len(num_new)) and int(num_new.max()) == 1,
            max_seq_len=int(seq_lens.max()) if len(seq_lens) else 0,
        )
        return meta, torch.from_numpy(positions).to(dev)

    def forward(self, batch: ForwardBatch) -> torch.Tensor:
        """Logits [num sampled rows, vocab] for the rows with batch.sample set."""
        meta, positions = self.build_metadata(batch)
        cu_end = np.cumsum(batch.num_new.astype(np.int64)) - 1
        logits_idx = torch.from_numpy(cu_end[batch.sample]).to(self.device)
        input_ids = torch.from_numpy(batch.input_ids.astype(np.int64)).to(self.device)
        if self.cuda_graph is not None and self.cuda_graph.can_run(meta):
            return self.cuda_graph.replay(meta, input_ids, positions, logits_idx)
        self.attn.plan(meta)
        return self.model(input_ids, positions, self.attn, logits_idx)

    def step(self, batch: ForwardBatch) -> StepResult:
        t0 = time.perf_counter()
        self._apply_updates(batch)
        B = batch.batch_size
        next_ids = np.full(B, -1, dtype=np.int32)
        result = StepResult(step=batch.step, next_ids=next_ids)
        if B:
            logits = self.forward(batch)
            rows = np.nonzero(batch.sample)[0]
            if len(rows):
                out = self.sampler.sample(logits, batch.slots[rows].tolist(),
                                          self._grammar_mask(batch, rows))
                next_ids[rows] = out.next_ids.cpu().numpy()
                if out.logprobs is not None:
                    lp = np.zeros(B, dtype=np.float32)
                    lp[rows] = out.logprobs.cpu().numpy()
                    result.logprobs = lp
                if out.top_ids is not None:
                    k = out.top_ids.shape[1]
                    result.top_ids = np.full((B, k), -1, dtype=np.int32)
                    result.top_logprobs = np.zeros((B, k), dtype=np.float32)
                    result.top_ids[rows] = out.top_ids.cpu().numpy()
                    result.top_logprobs[rows] = out.top_logprobs.cpu().numpy()
        result.forward_seconds = time.perf_counter() - t0
        return result
