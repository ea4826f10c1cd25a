"""Executes one ForwardBatch: page-table updates, attention planning, forward, sampling."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator

import numpy as np
import torch

from radixrt.attention.base import AttentionBackend, AttentionMetadata, build_step_inputs
from radixrt.attention.staging import Staging, to_device
from radixrt.config import EngineConfig, torch_dtype
from radixrt.ipc.messages import ForwardBatch, StepResult
from radixrt.kvcache.pool import KVPool, KVPoolShape
from radixrt.model_info import resolve_context_length
from radixrt.models import dense_cpu, fused_cuda, gemm_cuda, gemv_cuda
from radixrt.models.config import ModelConfig, shard_config
from radixrt.models.loader import load_model
from radixrt.models.parallel import TensorParallel
from radixrt.models.quant import set_batch_invariant
from radixrt.worker import argmax_cuda
from radixrt.worker.graph_runner import (
    GraphRunner,
    create_graph_runner,
    graph_batch_sizes,
    pad_decode_rows,
)
from radixrt.worker.launched import LaunchedStep
from radixrt.worker.sampler import Sampler, prompt_logprobs

logger = logging.getLogger("radixrt")


@contextlib.contextmanager
def start_stage(device: torch.device, what: str,
                seconds: dict[str, float] | None = None) -> Iterator[None]:
    """A start-up stage: its seconds go into `seconds[what]`; on CUDA it is also logged as it
    begins and ends (on a machine's first start several stages compile kernels, FlashInfer's
    JIT and Triton's, for minutes, which must not look like a hang). On CPU the stages take
    milliseconds and say nothing."""
    cuda = device.type == "cuda"
    if cuda:
        logger.info("%s ...", what)
    t0 = time.perf_counter()
    yield
    dt = time.perf_counter() - t0
    if seconds is not None:
        seconds[what] = dt
    if cuda:
        logger.info("%s: %.1f s", what, dt)


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
    if config.attention_backend == "cpu":
        from radixrt.attention.cpu_backend import CpuAttentionBackend

        return CpuAttentionBackend(pool, model_cfg.num_heads, model_cfg.head_dim,
                                   torch_dtype(config.dtype),
                                   batch_invariant=config.deterministic)
    if config.attention_backend == "flashinfer":
        from radixrt.attention.flashinfer_backend import FlashInferAttentionBackend

        return FlashInferAttentionBackend(pool, model_cfg, config)
    raise ValueError(f"unknown attention backend {config.attention_backend!r}")


class ModelRunner:
    """The worker's engine room: model weights, KV pool, page table of every slot, attention
    backend and sampler. `step(ForwardBatch)` applies the batch's changes, runs the model over
    the flattened tokens and samples the rows that finish their prompt.

    Under tensor parallelism (tp.size > 1) every rank runs every step on its shard (its
    heads, its KV heads in its pool); only rank 0 has a sampler and a StepResult to give."""

    def __init__(self, config: EngineConfig, model_cfg: ModelConfig | None = None,
                 tp: TensorParallel | None = None) -> None:
        self.config = config
        self.tp = tp = tp or TensorParallel()
        # Seconds of each start-up stage after loading (start_stage), for the log and benchmarks.
        self.start_seconds: dict[str, float] = {}
        self.device = torch.device(config.device)
        self.dtype = torch_dtype(config.dtype)
        full_cfg = model_cfg or ModelConfig.from_dir(config.model_path)
        self.model_cfg = shard_config(full_cfg, tp.size)  # this rank's heads and MLP width
        torch.manual_seed(config.seed)
        # A 16-bit checkpoint computed in float32 keeps its matrices 16-bit (same results,
        # half the bytes a decode step reads); its linears then must be DenseLinear.
        narrow = dense_cpu.narrow_storage(config.model_path, self.dtype, self.device,
                                          config.quantization)
        self.model = load_model(config.model_path, self.dtype, self.device, full_cfg,
                                quantization=config.quantization, tp=tp, matrix_dtype=narrow)
        if config.deterministic:  # build_engine_config checked that the kernels are there
            logger.info("--deterministic: %d linears on batch-invariant kernels",
                        set_batch_invariant(self.model)
                        + dense_cpu.install(self.model, 0, batch_invariant=True,
                                            activation_dtype=self.dtype))
        elif self.device.type == "cpu" and dense_cpu.float_linears(self.model):
            rows = dense_cpu.kernel_rows(config.model_path, self.dtype, weight_dtype=narrow)
            if (rows > 0 or narrow) and dense_cpu.install(self.model, rows,
                                                          activation_dtype=self.dtype):
                logger.info("float linears%s: calls of up to %s rows through radixrt's "
                            "dense kernel (faster here; measured once, cached)",
                            f" ({str(narrow).removeprefix('torch.')} matrices, float32 math)"
                            if narrow else "",
                            "any number of" if rows == dense_cpu.UNLIMITED else rows)
        self.kv_dtype = torch_dtype(config.kv_dtype)
        num_pages = tp.agree_min(size_kv_pool(config, self.model_cfg, self.kv_dtype,
                                              self.device))
        m = self.model_cfg
        self.pool = KVPool(KVPoolShape(m.num_layers, num_pages, config.page_size,
                                       m.num_kv_heads, m.head_dim), self.kv_dtype, self.device,
                           head_major=config.kv_head_major)
        self.page_size = config.page_size
        self.context_length = context_length(config, m)
        self.max_pages_per_req = -(-self.context_length // self.page_size) + 1
        # Page table of every request slot, kept on the host; the scheduler sends only changes.
        self.page_table = np.full((max_slots(config), self.max_pages_per_req),
                                  self.pool.scratch_page, dtype=np.int32)
        self.attn = make_attention_backend(config, self.pool, m)
        # Only rank 0 samples (see radixrt/models/parallel.py for why that keeps ranks in step).
        self.sampler = None
        self.argmax_choice = ""  # which row-wise argmax the sampler uses, and why
        if tp.rank == 0:
            argmax, self.argmax_choice = argmax_cuda.pick(m.vocab_size, self.device, self.dtype)
            if self.device.type == "cuda":
                logger.info("greedy sampling: %s", self.argmax_choice)
            self.sampler = Sampler(m.vocab_size, self.device, config.seed, argmax=argmax)
        # The token each slot sampled last, on the device: resolves PENDING_TOKEN inputs.
        self.last_token = torch.zeros(max_slots(config), dtype=torch.long, device=self.device)
        self.staging = Staging(self.device)  # one host-to-device copy per step
        logger.info("KV pool: %d pages x %d tokens, %s (%.2f GiB); %s attention", num_pages,
                    self.page_size, config.kv_dtype,
                    self.pool.shape.bytes_per_page(self.kv_dtype) * num_pages / 2**30,
                    config.attention_backend)
        # FlashInfer's fused norm/activation/RoPE kernels, checked once against torch before
        # any graph captures them (an op that fails here runs as torch ops instead).
        self.fused_ops: dict[str, str] = {}
        if self.device.type == "cuda":
            with start_stage(self.device, "checking FlashInfer's fused ops against torch",
                             self.start_seconds):
                self.fused_ops = fused_cuda.verify(
                    self.device, self.dtype, m.hidden_size, m.head_dim, m.num_heads,
                    m.num_kv_heads, m.intermediate_size)
            logger.info("fused ops: %s", ", ".join(f"{k} {v}" for k, v in
                                                   self.fused_ops.items()))
        # One-token projections through a Triton GEMV where it measures faster than cuBLAS.
        with start_stage(self.device, "timing one-token GEMVs against cuBLAS",
                         self.start_seconds):
            self.gemv: dict[str, str] = gemv_cuda.install(
                self.model, self.device,
                graphs=not config.disable_cuda_graph and self.attn.supports_cuda_graph)
        if self.gemv:
            logger.info("one-token linears: %s", "; ".join(f"{k}: {v}" for k, v in
                                                           self.gemv.items()))
        # Decode-batch projections through the cuBLASLt algorithm that measures fastest at
        # each captured batch size (only graphs run those sizes; prefill stays F.linear).
        self.lt_gemm: dict[str, str] = {}
        if (self.device.type == "cuda" and not config.disable_cuda_graph
                and self.attn.supports_cuda_graph and not config.deterministic):
            with start_stage(self.device, "timing cuBLASLt algorithms for decode batches",
                             self.start_seconds):
                self.lt_gemm = gemm_cuda.install(self.model, self.device,
                                                 graph_batch_sizes(config))
            if self.lt_gemm:
                logger.info("decode-batch linears: %s", "; ".join(
                    f"{k}: {v}" for k, v in self.lt_gemm.items()))
        # A small prefill and decode step before serving: on CUDA, FlashInfer builds a kernel
        # module the first time it runs it (a JIT compile: minutes on a machine's first start),
        # and no decode graph touches the prefill module of a model whose decode runs on CUDA
        # cores (nor anything, with graphs off), so the first request would wait for the build.
        self.warm_up_seconds = self._warm_up()
        # Decode graphs (None on CPU, without a capturable backend, or --disable-cuda-graph).
        self.graphs: GraphRunner | None = create_graph_runner(self)
        if self.graphs is not None:
            self.start_seconds["capturing decode graphs"] = self.graphs.capture_seconds

    @torch.inference_mode()
    def _warm_up(self) -> float:
        """Run a prefill step of two requests (3 tokens and 1), then a decode step of two,
        through the model (eagerly), their KV written to the scratch page and their logits
        dropped; returns the seconds."""
        t0 = time.perf_counter()
        rows = np.full((2, -(-4 // self.page_size)), self.pool.scratch_page, dtype=np.int32)
        with start_stage(self.device, "warm-up: a prefill and a decode step",
                         self.start_seconds):
            for start, num_new in (([0, 0], [3, 1]), ([3, 1], [1, 1])):
                meta, positions, (input_ids, logits_idx) = build_step_inputs(
                    np.array(start), np.array(num_new), rows, self.page_size,
                    self.staging.upload,
                    [np.zeros(sum(num_new), np.int64), np.cumsum(num_new) - 1],
                    page_lists=self.attn.wants_page_lists)
                self.attn.plan(meta)
                self.model(input_ids, positions, self.attn, logits_idx)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
        return time.perf_counter() - t0

    @property
    def num_pages(self) -> int:
        return self.pool.shape.num_pages

    def _apply_updates(self, batch: ForwardBatch) -> None:
        for slot in batch.freed_slots:
            if self.sampler is not None:
                self.sampler.remove(slot)
            self.page_table[slot].fill(self.pool.scratch_page)
        if self.sampler is not None:
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
        return (to_device(pos, torch.long, self.device),
                to_device(batch.mask_bits, None, self.device))

    def build_metadata(self, batch: ForwardBatch) -> tuple[AttentionMetadata, torch.Tensor]:
        """Attention metadata and flat positions of one batch."""
        meta, positions, _ = self.step_inputs(batch)
        return meta, positions

    def step_inputs(self, batch: ForwardBatch, pad_to: int | None = None
                    ) -> tuple[AttentionMetadata, torch.Tensor, list[torch.Tensor]]:
        """Metadata, positions, logits rows (the prompt logprobs' rows, then the sampling
        ones), token ids, the sampling rows' slots and (when the batch has PENDING_TOKEN
        inputs) each token's slot: every host array of the step in
        one transfer. (A plain .to(device) of a host array would wait for the device to finish
        the step in flight, which undoes overlap scheduling.) pad_to: a decode batch padded
        to that many rows for a graph (graph_runner.pad_decode_rows)."""
        cu_end = np.cumsum(batch.num_new.astype(np.int64)) - 1
        start, num_new, rows = batch.start_pos, batch.num_new, self.page_table[batch.slots]
        input_ids = batch.input_ids.astype(np.int64)
        pending = bool(len(input_ids)) and int(input_ids.min()) < 0
        tok_slots = np.repeat(batch.slots, batch.num_new).astype(np.int64) if pending else None
        if pad_to is not None:
            start, num_new, rows = pad_decode_rows(start, rows, pad_to, self.pool.scratch_page)
            zeros = np.zeros(pad_to - len(input_ids), np.int64)  # padding: token 0, slot 0
            input_ids = np.concatenate([input_ids, zeros])
            if tok_slots is not None:
                tok_slots = np.concatenate([tok_slots, zeros])
        logits_rows = cu_end[batch.sample]
        if batch.prompt_lp_rows is not None:  # prompt logprobs' rows first
            logits_rows = np.concatenate([batch.prompt_lp_rows.astype(np.int64), logits_rows])
        extra = [logits_rows, input_ids, batch.slots[batch.sample].astype(np.int64)]
        if tok_slots is not None:
            extra.append(tok_slots)
        if batch.prompt_lp_targets is not None:
            extra.append(batch.prompt_lp_targets.astype(np.int64))
        if batch.embed_rows is not None:
            extra.append(batch.embed_rows.astype(np.int64))
        return build_step_inputs(start, num_new, rows, self.page_size, self.staging.upload,
                                 extra, page_lists=self.attn.wants_page_lists)

    def forward(self, batch: ForwardBatch) -> torch.Tensor:
        """Logits (float32) [num sampled rows, vocab] for the rows with batch.sample set (a
        tensor of the caller's own)."""
        logits = self._forward(batch)[0]
        if batch.prompt_lp_rows is not None:
            logits = logits[len(batch.prompt_lp_rows):]
        return logits.float() if logits.dtype != torch.float32 else logits.clone()

    def _forward(self, batch: ForwardBatch, hidden_out: list[torch.Tensor] | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(logits of the prompt logprobs' rows and then the sampling rows, in the model's
        dtype; the sampling rows' slots and the prompt logprobs' target tokens on the device).
        From a graph the logits may be a view of its output: valid until the next step. The
        batch's embedding rows' hidden states go into hidden_out (such a batch runs eagerly).
        """
        bs = None
        if self.graphs is not None and batch.embed_rows is None:
            bs = self.graphs.padded_size(batch.num_new)
        meta, positions, (logits_idx, input_ids, sample_slots, *tok_slots) = \
            self.step_inputs(batch, bs)
        embed_rows = tok_slots.pop() if batch.embed_rows is not None else None
        lp_targets = tok_slots.pop() if batch.prompt_lp_targets is not None else None
        if tok_slots:  # PENDING_TOKEN inputs: the slot's last sampled token, on the device
            input_ids = torch.where(input_ids < 0, self.last_token[tok_slots[0]], input_ids)
        if self.graphs is not None and bs is not None:
            # Every row of a decode batch samples (the usual case): its logits are the graph
            # output's leading rows, no gather needed.
            every = bool(batch.sample.all()) and batch.prompt_lp_rows is None
            return self.graphs.replay(meta, input_ids, positions, logits_idx,
                                      batch.batch_size if every else None), sample_slots, \
                lp_targets
        self.attn.plan(meta)
        logits = self.model(input_ids, positions, self.attn, logits_idx, hidden_out, embed_rows)
        return logits, sample_slots, lp_targets

    def launch(self, batch: ForwardBatch) -> LaunchedStep:
        """Queue the step on the device (run it, on CPU); the tokens stay there until
        `.result()`. The next launch may come first: it reads them through last_token."""
        t0 = time.perf_counter()
        self._apply_updates(batch)
        rows = np.nonzero(batch.sample)[0]
        out = None
        prompt_lp = embeddings = None
        if batch.batch_size:
            # (a list only for a batch with embedding rows: the decode step allocates none)
            hidden: list[torch.Tensor] | None = [] if batch.embed_rows is not None else None
            logits, sample_slots, lp_targets = self._forward(batch, hidden)
            if hidden and self.sampler is not None:
                embeddings = torch.nn.functional.normalize(hidden[0], dim=-1)
            if lp_targets is not None:
                P = len(lp_targets)
                if self.sampler is not None:
                    prompt_lp = prompt_logprobs(logits[:P], lp_targets, batch.prompt_lp_top)
                logits = logits[P:]
            if len(rows) and self.sampler is not None:
                out = self.sampler.sample(logits, batch.slots[rows].tolist(),
                                          self._grammar_mask(batch, rows))
                self.last_token[sample_slots] = out.next_ids
        return LaunchedStep.launch(batch.step, batch.batch_size, rows, out, t0, prompt_lp,
                                   embeddings)

    def step(self, batch: ForwardBatch) -> StepResult:
        return self.launch(batch).result()
