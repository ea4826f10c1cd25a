"""FlashInfer attention (CUDA): paged prefill/decode wrappers reading the KV pool in place.

plan() hands FlashInfer the step's CSR page lists once per step: built on the host with the
rest of the metadata and uploaded in the step's one copy (attention/staging.py), so planning
never waits on the GPU; forward() writes
the layer's new K/V into the pool at meta.out_slots and runs the planned wrapper over the
pool's NHD page views. Decode-only steps use BatchDecodeWithPagedKVCacheWrapper, every other
step BatchPrefillWithPagedKVCacheWrapper with a causal mask (FlashInfer aligns it bottom-right,
so query j of a request with L keys sees keys 0 .. L - n_new + j: exactly our positions).

flashinfer is imported lazily: this module imports on machines without it, and the backend
says what is missing when it is built.
"""

from __future__ import annotations

import os
from types import ModuleType
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch

from radixrt.attention import rope_kv_cuda
from radixrt.attention.base import AttentionBackend, AttentionMetadata, Rope, build_metadata
from radixrt.attention.staging import PinnedHostArrays

if TYPE_CHECKING:
    from radixrt.config import EngineConfig
    from radixrt.kvcache.pool import KVPool
    from radixrt.models.config import ModelConfig

# FlashInfer's recommended float workspace (split-k partial results); shared by all wrappers
# of one backend, since only one of them runs at a time on the stream.
WORKSPACE_BYTES = 128 * 1024 * 1024
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16)
# fa2 by default: its module also serves tensor-core decode (one JIT compile instead of two)
# and it takes any head_dim; prefill time is dominated by the matmuls, not attention.
PREFILL_BACKEND_ENV = "RADIXRT_FLASHINFER_PREFILL_BACKEND"
DEFAULT_PREFILL_BACKEND = "fa2"
# The kernel of decode-only steps. auto: tensor cores (fa2) where a KV head serves >= 4 query
# heads, else the CUDA-core decode kernel. fa3 runs tensor-core decode through the Hopper
# kernels. xqa is TensorRT-LLM's decode kernel as FlashInfer ships it (SM90 and newer): no
# plan, it reads the page table and sequence lengths the metadata already holds. Which is
# fastest depends on card, batch and GQA group: bench/gpu_bench.py's decode_kernels section
# times them all in one run.
DECODE_KERNEL_ENV = "RADIXRT_FLASHINFER_DECODE_KERNEL"
DECODE_KERNELS = ("auto", "fa2", "fa3", "cuda-cores", "xqa")
# xqa's workspace: FlashInfer reserves its first 8 MiB for the semaphores of multi-block
# decode (zero at rest); the rest holds the split rows' partial results, a few MiB at most.
XQA_WORKSPACE_BYTES = 40 * 1024 * 1024
XQA_PAGE_SIZES = (16, 32, 64, 128)
# FlashInfer's tensor-core (prefill-kernel) planner sizes split-KV for 2 CTAs per SM.
FI_CTAS_PER_SM = 2
unsplit_graphs = True  # False: every decode graph keeps FlashInfer's split-KV (benchmark A/B)


def unsplit_batch_size(device: torch.device, num_kv_heads: int) -> int | None:
    """The smallest decode batch whose graph can drop FlashInfer's split-KV for nothing.

    In CUDA-graph mode FlashInfer's tensor-core decode always runs split-KV: the kernel
    writes float32 partial outputs and a merge kernel combines them, every layer. But its
    planner gives each request more than one KV chunk only while the chunks fit in
    FI_CTAS_PER_SM x SMs / num_kv_heads work items; from a batch that large on, every
    request is one chunk, and the merge only copies. Planning those graphs with
    disable_split_kv keeps the same partition and drops the merge (a kernel per layer)."""
    if device.type != "cuda":
        return None
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return FI_CTAS_PER_SM * sms // num_kv_heads


def pin_decode_query_offsets(largest_batch: int) -> bool:
    """Make FlashInfer's eager decode wrapper upload its query offsets from pinned memory.

    Its plan() takes the offsets 0..B from a cached host arange (flashinfer.utils._cache_buf,
    one per power of two) and copies them to the device; that arange is pageable, and CUDA
    waits for the stream before staging a pageable copy, so planning an eager CUDA-core decode
    step would wait for the step in flight. Seeding the cache with pinned aranges (the same
    values) removes the wait. A FlashInfer without that cache keeps its own; False then."""
    try:
        from flashinfer import utils
        cache = utils._cache_buf
    except (ImportError, AttributeError):
        return False
    if not isinstance(cache, dict):
        return False
    n = 1
    while n < 2 * (largest_batch + 1):  # every power of two up to the offsets of the largest
        key = (f"range_{n}", "cpu")
        if key not in cache or not cache[key].is_pinned():
            cache[key] = torch.arange(n, dtype=torch.int32).pin_memory()
        n *= 2
    return True


def import_flashinfer() -> ModuleType:
    try:
        import flashinfer
    except ImportError as e:
        raise RuntimeError(
            "the flashinfer attention backend needs the flashinfer-python package "
            "(pip install flashinfer-python; offline GPU machines: scripts/gpu_check.sh "
            "installs it from gpu_bundle/), or run with --attention-backend torch"
        ) from e
    return flashinfer


def use_tensor_cores(num_qo_heads: int, num_kv_heads: int) -> bool:
    """Tensor-core decode pays off once a KV head serves >= 4 query heads (as SGLang picks)."""
    return num_qo_heads // num_kv_heads >= 4


def decode_wrapper_kwargs(kernel: str, num_qo_heads: int, num_kv_heads: int
                          ) -> dict[str, Any]:
    """BatchDecodeWithPagedKVCacheWrapper's kernel arguments for a DECODE_KERNELS name."""
    if kernel not in DECODE_KERNELS:
        raise ValueError(f"unknown FlashInfer decode kernel {kernel!r} ({DECODE_KERNEL_ENV}); "
                         f"choose one of {', '.join(DECODE_KERNELS)}")
    if kernel == "auto":
        kernel = "fa2" if use_tensor_cores(num_qo_heads, num_kv_heads) else "cuda-cores"
    if kernel == "xqa":  # decode-only steps bypass the wrapper (xqa has no plan)
        kernel = "fa2"
    if kernel == "cuda-cores":
        return {"use_tensor_cores": False}
    return {"use_tensor_cores": True, "backend": kernel}


class PagedKVInputs(NamedTuple):
    """FlashInfer's CSR description of one batch.

    qo_indptr, kv_indptr, kv_last_page_len and kv_lens are int32 CPU tensors (the wrappers'
    planners read them on the host); kv_indices is int32 on the page table's device.
    """

    qo_indptr: torch.Tensor  # [B+1]: request i's queries are rows qo_indptr[i]:qo_indptr[i+1]
    kv_indptr: torch.Tensor  # [B+1]: its pages are kv_indices[kv_indptr[i]:kv_indptr[i+1]]
    kv_indices: torch.Tensor  # [kv_indptr[-1]]
    kv_last_page_len: torch.Tensor  # [B]: valid slots of the last page, 1..page_size
    # [B]: each request's KV length. The prefill planner uploads it; handed none, it derives
    # one in pageable memory, and that upload would wait for the stream.
    kv_lens: torch.Tensor | None = None


def build_paged_kv_inputs(meta: AttentionMetadata, host: PinnedHostArrays | None = None
                          ) -> PagedKVInputs:
    """FlashInfer's CSR page lists of a batch: the ones the metadata carries (built on the host
    with the step's inputs, kv_indices in the step's one upload), as tensors. Request i reads
    page_table[i, :ceil(seq_len_i / page_size)]. host: where the host arrays go (pinned on
    CUDA); default plain tensors over them."""
    if meta.kv_indptr_host is None or meta.kv_indices is None or (
            meta.kv_last_page_len_host is None):
        raise ValueError("metadata built without page lists (page_lists=False)")
    qo_indptr = np.zeros(meta.batch_size + 1, dtype=np.int32)
    np.cumsum(meta.num_new_host, out=qo_indptr[1:])
    kv_lens = np.add(meta.start_pos_host, meta.num_new_host, dtype=np.int32)
    qo, kv, last, lens = (host or PinnedHostArrays("cpu")).views(
        [qo_indptr, meta.kv_indptr_host, meta.kv_last_page_len_host, kv_lens])
    return PagedKVInputs(qo_indptr=qo, kv_indptr=kv, kv_indices=meta.kv_indices,
                         kv_last_page_len=last, kv_lens=lens)


class FlashInferAttentionBackend(AttentionBackend):
    """CUDA attention through FlashInfer's paged prefill/decode wrappers, planned once per step
    and reading the KV pool in place (see the module docstring)."""

    def __init__(self, pool: KVPool, model_cfg: ModelConfig, config: EngineConfig | None = None,
                 *, prefill_backend: str | None = None, decode_kernel: str | None = None,
                 workspace: torch.Tensor | None = None) -> None:
        self.fi = import_flashinfer()
        if pool.head_major:
            raise RuntimeError("the flashinfer attention backend reads token-major (NHD) KV "
                               "pages; build the pool without head_major")
        if pool.dtype not in SUPPORTED_DTYPES:
            raise RuntimeError(
                f"the flashinfer attention backend needs a float16 or bfloat16 KV cache, got "
                f"{str(pool.dtype).removeprefix('torch.')}; use --dtype bfloat16 or "
                "--attention-backend torch")
        self.pool = pool
        self.config = config
        self.num_qo_heads = model_cfg.num_heads
        self.num_kv_heads = pool.shape.num_kv_heads
        self.head_dim = pool.shape.head_dim
        self.page_size = pool.shape.page_size
        self.dtype = pool.dtype
        self.sm_scale = self.head_dim**-0.5
        self.decode_kernel = decode_kernel or os.environ.get(DECODE_KERNEL_ENV, "auto")
        self.decode_kwargs = decode_wrapper_kwargs(self.decode_kernel, self.num_qo_heads,
                                                   self.num_kv_heads)
        self.xqa = self.decode_kernel == "xqa"
        if self.xqa:
            check_xqa(pool.device, self.page_size, self.head_dim)
            self.xqa_workspace = torch.zeros(XQA_WORKSPACE_BYTES, dtype=torch.uint8,
                                             device=pool.device)
        # xqa's inputs this step: the page table and sequence lengths (graph mode: the fixed
        # buffers the captured kernels read).
        self._xqa_inputs: tuple[torch.Tensor, torch.Tensor] | None = None
        self._xqa_bufs: tuple[torch.Tensor, torch.Tensor] | None = None
        # FlashInfer wants the workspace zeroed before its first use.
        self.workspace = (workspace if workspace is not None else
                          torch.zeros(WORKSPACE_BYTES, dtype=torch.uint8, device=pool.device))
        backend = prefill_backend or os.environ.get(PREFILL_BACKEND_ENV, DEFAULT_PREFILL_BACKEND)
        self.decode_wrapper = self.fi.BatchDecodeWithPagedKVCacheWrapper(
            self.workspace, "NHD", **self.decode_kwargs)
        if not self.decode_kwargs["use_tensor_cores"] and pool.device.type == "cuda":
            pin_decode_query_offsets(config.max_running_requests if config else 1024)
        # Tensor-core decode is FlashInfer's prefill kernel over one-token queries; eagerly it
        # runs through a prefill wrapper, which takes our (pinned) query offsets where the
        # decode wrapper would upload its own from pageable memory (a wait for the stream).
        self.decode_tc_wrapper = (
            self.fi.BatchPrefillWithPagedKVCacheWrapper(
                self.workspace, "NHD", backend=self.decode_kwargs["backend"])
            if self.decode_kwargs["use_tensor_cores"] else None)
        self.prefill_wrapper = self.fi.BatchPrefillWithPagedKVCacheWrapper(
            self.workspace, "NHD", backend=backend)
        # RoPE and the K/V write as one kernel, where it checks out on this device.
        self.rope_kv = rope_kv_cuda.check(pool.device, pool.dtype, self.num_qo_heads,
                                          self.num_kv_heads, self.head_dim)
        self.rope_kv_pdl = self.rope_kv == "fused" and rope_kv_cuda.check_pdl(
            pool.device, pool.dtype, self.num_qo_heads, self.num_kv_heads, self.head_dim)
        # Decode graphs of at least this many rows plan without split-KV (fa2 tensor cores).
        self.unsplit_from = (unsplit_batch_size(pool.device, self.num_kv_heads)
                             if self.decode_kwargs.get("backend") == "fa2" else None)
        # The plan's host arrays (FlashInfer copies them to the device itself): pinned, so
        # planning step N+1 does not wait for step N (see PinnedHostArrays).
        self.host = PinnedHostArrays(pool.device)
        self.meta: AttentionMetadata | None = None
        self._wrapper: Any = None
        # Graph mode (init_capture): one decode wrapper per captured size over fixed buffers.
        self._graph_bufs: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self._graph_wrappers: dict[int, Any] = {}

    supports_cuda_graph = True
    wants_page_lists = True

    def init_capture(self, max_batch_size: int, max_pages_per_req: int) -> None:
        dev, B = self.pool.device, max_batch_size
        if self.xqa:
            self._xqa_bufs = (
                torch.full((B, max_pages_per_req), self.pool.scratch_page, dtype=torch.int32,
                           device=dev),  # page table
                torch.ones(B, dtype=torch.int32, device=dev))  # sequence lengths
            return
        self._graph_bufs = (
            torch.arange(B + 1, dtype=torch.int32, device=dev),  # kv_indptr
            torch.full((B * max_pages_per_req,), self.pool.scratch_page, dtype=torch.int32,
                       device=dev),  # kv_indices
            torch.ones(B, dtype=torch.int32, device=dev))  # kv_last_page_len
        self._graph_wrappers = {}

    def _graph_wrapper(self, bs: int) -> Any:
        if bs not in self._graph_wrappers:
            assert self._graph_bufs is not None, "init_capture() must run first"
            indptr, indices, last = self._graph_bufs
            self._graph_wrappers[bs] = self.fi.BatchDecodeWithPagedKVCacheWrapper(
                self.workspace, "NHD", use_cuda_graph=True, **self.decode_kwargs,
                paged_kv_indptr_buffer=indptr[: bs + 1],
                paged_kv_indices_buffer=indices, paged_kv_last_page_len_buffer=last[:bs])
        return self._graph_wrappers[bs]

    def prepare_for_capture(self, meta: AttentionMetadata) -> None:
        self.prepare_for_replay(meta)

    def prepare_for_replay(self, meta: AttentionMetadata) -> None:
        """Plan into the fixed buffers of the wrapper of size meta.batch_size, which the
        captured kernels read."""
        self.meta = meta
        if self.xqa:
            assert self._xqa_bufs is not None, "init_capture() must run first"
            table, lens = self._xqa_bufs
            bs, w = meta.page_table.shape
            table[:bs, :w].copy_(meta.page_table, non_blocking=True)
            lens[:bs].copy_(meta.seq_lens, non_blocking=True)
            self._xqa_inputs = (table[:bs], lens[:bs])
            self._wrapper = None
            return
        inputs = build_paged_kv_inputs(meta, self.host)
        wrapper = self._graph_wrapper(meta.batch_size)
        # The same choice at capture and at every replay: it depends on the size alone.
        unsplit = (unsplit_graphs and self.unsplit_from is not None
                   and meta.batch_size >= self.unsplit_from)
        wrapper.plan(inputs.kv_indptr, inputs.kv_indices, inputs.kv_last_page_len,
                     self.num_qo_heads, self.num_kv_heads, self.head_dim, meta.page_size,
                     **self.plan_kwargs(), **({"disable_split_kv": True} if unsplit else {}))
        self.host.fence()
        self._wrapper = wrapper

    def plan_kwargs(self) -> dict[str, Any]:
        return {"q_data_type": self.dtype, "kv_data_type": self.dtype, "sm_scale": self.sm_scale}

    def plan(self, meta: AttentionMetadata) -> None:
        self.meta = meta
        if meta.is_decode and self.xqa:
            self._xqa_inputs = (meta.page_table.contiguous(), meta.seq_lens.contiguous())
            self._wrapper = None
            return
        inputs = build_paged_kv_inputs(meta, self.host)
        if meta.is_decode and self.decode_tc_wrapper is not None:
            self.decode_tc_wrapper.plan(
                inputs.qo_indptr, inputs.kv_indptr, inputs.kv_indices, inputs.kv_last_page_len,
                self.num_qo_heads, self.num_kv_heads, self.head_dim, meta.page_size,
                causal=False, seq_lens=inputs.kv_lens, **self.plan_kwargs())
            self._wrapper = self.decode_tc_wrapper
        elif meta.is_decode:
            self.decode_wrapper.plan(
                inputs.kv_indptr, inputs.kv_indices, inputs.kv_last_page_len,
                self.num_qo_heads, self.num_kv_heads, self.head_dim, meta.page_size,
                **self.plan_kwargs())
            self._wrapper = self.decode_wrapper
        else:
            # Mixed steps (prefill chunks plus decodes) go through prefill too: a decode row
            # is a 1-token query there.
            self.prefill_wrapper.plan(
                inputs.qo_indptr, inputs.kv_indptr, inputs.kv_indices, inputs.kv_last_page_len,
                self.num_qo_heads, self.num_kv_heads, self.head_dim, meta.page_size,
                causal=True, seq_lens=inputs.kv_lens, **self.plan_kwargs())
            self._wrapper = self.prefill_wrapper
        self.host.fence()

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer_id: int
                ) -> torch.Tensor:
        meta = self.meta
        assert meta is not None, "plan() must run before forward()"
        # Written first: the new tokens attend to themselves through the pages.
        self.pool.write(layer_id, meta.out_slots, k, v)
        return self._attend(q, layer_id)

    def forward_rope(self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
                     v: torch.Tensor, layer_id: int, rope: Rope) -> torch.Tensor:
        meta = self.meta
        assert meta is not None, "plan() must run before forward()"
        k_cache, v_cache = self.pool.k_cache[layer_id], self.pool.v_cache[layer_id]
        if self.rope_kv != "fused" or not rope_kv_cuda.usable(q, k, v, k_cache, rope.cos_sin):
            return super().forward_rope(positions, q, k, v, layer_id, rope)
        assert rope.cos_sin is not None
        rope_kv_cuda.rope_and_write(positions, q, k, v, rope.cos_sin, k_cache, v_cache,
                                    meta.out_slots, pdl=self.rope_kv_pdl)
        return self._attend(q, layer_id)

    def _attend(self, q: torch.Tensor, layer_id: int) -> torch.Tensor:
        kv = (self.pool.k_pages(layer_id), self.pool.v_pages(layer_id))
        if self._wrapper is None:  # xqa
            assert self._xqa_inputs is not None
            table, lens = self._xqa_inputs
            # xqa reads q as dense [B, heads, head_dim] rows; the page table's width times
            # the page size is the longest sequence it allows.
            return self.fi.decode.xqa_batch_decode_with_kv_cache(
                q.to(self.dtype).contiguous(), kv, self.xqa_workspace, table, lens,
                table.shape[1] * self.page_size, bmm1_scale=self.sm_scale, bmm2_scale=1.0)
        # q may be a view into the qkv projection's output (rows strided): the paged kernels
        # take q's strides (FlashInfer PR #553), so no copy.
        return self._wrapper.run(q.to(self.dtype), kv)


def check_xqa(device: torch.device, page_size: int, head_dim: int) -> None:
    """xqa's limits (FlashInfer's gen_xqa_module), said before a step finds them."""
    if page_size not in XQA_PAGE_SIZES:
        raise ValueError(f"the xqa decode kernel takes page sizes {XQA_PAGE_SIZES}, "
                         f"not {page_size}")
    if head_dim % 16 or not 16 <= head_dim <= 256:
        raise ValueError(f"the xqa decode kernel takes head_dim 16..256 in steps of 16, "
                         f"not {head_dim}")
    if device.type == "cuda" and torch.cuda.get_device_capability(device)[0] < 9:
        raise ValueError("the xqa decode kernel needs an SM90 (Hopper) or newer GPU")


def warmup_kernels(num_qo_heads: int, num_kv_heads: int, head_dim: int,
                   dtype: torch.dtype = torch.bfloat16, page_size: int = 16,
                   which: str = "both", device: str = "cuda") -> None:
    """Plan and run each wrapper once on a toy batch, so FlashInfer JIT-compiles its modules.

    Run before timing (or in parallel processes per head shape, to overlap nvcc builds).
    """
    from radixrt.kvcache.pool import KVPool, KVPoolShape

    pool = KVPool(KVPoolShape(1, 8, page_size, num_kv_heads, head_dim), dtype, device)

    class _Cfg:  # the backend reads only these ModelConfig fields
        num_heads = num_qo_heads

    backend = FlashInferAttentionBackend(pool, _Cfg(), None)  # type: ignore[arg-type]
    shapes = {"decode": [1, 1], "prefill": [3, 1]}
    for kind in (["decode", "prefill"] if which == "both" else [which]):
        num_new = shapes[kind]
        meta, _ = build_metadata(np.array([5, 2]), np.array(num_new),
                                 np.array([[0, 1], [2, 3]]), page_size, device)
        t = sum(num_new)
        backend.plan(meta)
        q = torch.randn(t, num_qo_heads, head_dim, dtype=dtype, device=device)
        kv = torch.randn(t, num_kv_heads, head_dim, dtype=dtype, device=device)
        backend.forward(q, kv, kv, 0)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
