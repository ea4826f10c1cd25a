"""Attention on CPU with radixrt's own kernels (csrc/attention_cpu.cpp, radixrt._attention_cpu).

The kernels read K/V straight from the pool's pages through the page table (no gather copy),
read each KV head once for its whole group of query heads, split long contexts over the
cores (flash-decoding) and tile prefill chunks; requests that share leading radix-cache pages
read those pages once for the whole group. plan() cuts the step into tasks once (in C++);
forward() writes the layer's new k/v into the pool and runs every task, in one native call.

The torch backend stays the reference these kernels are tested against.
"""

from __future__ import annotations

from types import ModuleType

import torch

from radixrt.attention.base import AttentionBackend, AttentionMetadata
from radixrt.attention.cascade import MIN_SHARED_PAGES
from radixrt.kvcache.pool import KVPool

SUPPORTED_DTYPES = (torch.float32, torch.bfloat16)
# Key split of the batch-invariant plan: cut at multiples of this many keys (the default
# plan's smallest split), so a long context still spreads over the threads.
INVARIANT_CHUNK = 256


def load_native() -> ModuleType:
    # Imported only here, after torch: the module's OpenMP then binds to torch's libgomp
    # (same soname) and shares its thread pool instead of starting a second one.
    from radixrt import _attention_cpu

    return _attention_cpu


def check_supported(num_heads: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype,
                    kv_dtype: torch.dtype) -> None:
    """Raise ValueError naming what the CPU kernels cannot run."""
    if num_kv_heads <= 0 or num_heads % num_kv_heads:
        raise ValueError(f"{num_heads} query heads are not a multiple of {num_kv_heads} KV heads")
    if head_dim % 16 or not 16 <= head_dim <= 256:
        raise ValueError(f"cpu attention needs head_dim a multiple of 16 up to 256, got {head_dim}")
    for name, dt in (("model dtype", dtype), ("KV cache dtype", kv_dtype)):
        if dt not in SUPPORTED_DTYPES:
            raise ValueError(f"cpu attention supports float32 and bfloat16, not {name} {dt}")


class CpuAttentionBackend(AttentionBackend):
    def __init__(self, pool: KVPool, num_heads: int, head_dim: int, dtype: torch.dtype,
                 num_threads: int | None = None, cascade_min_pages: int = MIN_SHARED_PAGES,
                 native: ModuleType | None = None, batch_invariant: bool = False) -> None:
        """native: another build of the kernels' module (a benchmark's baseline build).
        batch_invariant (--deterministic): each token's attention computed the same way
        whatever else the step holds (PlanOptions.invariant_chunk)."""
        if pool.device.type != "cpu":
            raise ValueError("the cpu attention backend needs the KV pool on the CPU")
        check_supported(num_heads, pool.shape.num_kv_heads, head_dim, dtype, pool.dtype)
        self.ext = native or load_native()
        self.pool = pool
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.dtype = dtype
        self.scale = head_dim**-0.5
        self.options = self.ext.PlanOptions()
        # None: torch's thread count, read at each plan (the worker may change it).
        self.fixed_threads = num_threads
        self.options.cascade_min_pages = 0 if batch_invariant else cascade_min_pages
        self.options.invariant_chunk = INVARIANT_CHUNK if batch_invariant else 0
        # The kernels read and write the pool through its strides (token- or head-major).
        k0, v0 = pool.k_cache[0], pool.v_cache[0]
        if k0.stride() != v0.stride() or k0.stride(2) != 1:
            raise ValueError(f"K and V pool strides differ or rows are not packed: "
                             f"{k0.stride()} vs {v0.stride()}")
        self.options.kv_slot_stride, self.options.kv_head_stride = k0.stride(0), k0.stride(1)
        s = pool.shape
        self.kv_row = s.num_kv_heads * head_dim
        self.q_row = num_heads * head_dim
        self.k_ptrs = [t.data_ptr() for t in pool.k_cache]
        self.v_ptrs = [t.data_ptr() for t in pool.v_cache]
        self.plan_obj = None
        self.num_tokens = 0
        d, hkv = head_dim, s.num_kv_heads
        packed = (d, 1)
        self._expected = ((dtype,) * 3 + (True,) * 3
                          + ((num_heads, d), (hkv, d), (hkv, d), 0, 0, packed, packed, packed))

    def plan(self, meta: AttentionMetadata) -> None:
        if meta.page_table.device.type != "cpu":
            raise ValueError("the cpu attention backend needs host metadata")
        self.options.num_threads = self.fixed_threads or torch.get_num_threads()
        s = self.pool.shape
        self.plan_obj = self.ext.Plan(
            meta.page_table.numpy(), meta.cu_new.numpy(), meta.start_pos.numpy(),
            meta.out_slots.numpy(), self.num_heads, s.num_kv_heads, self.head_dim, s.page_size,
            s.num_pages, self.dtype == torch.bfloat16, self.pool.dtype == torch.bfloat16,
            self.scale, self.options)
        self.num_tokens = int(meta.cu_new[-1]) if meta.batch_size else 0

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer_id: int
                ) -> torch.Tensor:
        plan = self.plan_obj
        assert plan is not None, "plan() must run before forward()"
        t = q.shape[0]
        # The kernels take raw pointers: check here what they assume (one comparison of
        # tuples per step and layer; the message names what differs).
        got = (q.dtype, k.dtype, v.dtype, q.is_cpu, k.is_cpu, v.is_cpu, q.shape[1:],
               k.shape[1:], v.shape[1:], k.shape[0], v.shape[0], q.stride()[1:],
               k.stride()[1:], v.stride()[1:])
        if got != self._expected[:9] + (t, t) + self._expected[11:]:
            self._explain_bad_input(q, k, v)
        out = torch.empty((t, self.num_heads, self.head_dim), dtype=self.dtype)
        plan.run(q.data_ptr(), q.stride(0), k.data_ptr(), k.stride(0), v.data_ptr(),
                 v.stride(0), out.data_ptr(), t, self.k_ptrs[layer_id], self.v_ptrs[layer_id])
        return out

    def _explain_bad_input(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        t = q.shape[0]
        for x, heads in ((q, self.num_heads), (k, self.pool.shape.num_kv_heads),
                         (v, self.pool.shape.num_kv_heads)):
            if (x.dtype != self.dtype or x.device.type != "cpu" or x.shape[0] != t
                    or x.shape[1:] != (heads, self.head_dim) or x.stride(2) != 1
                    or x.stride(1) != self.head_dim):
                raise ValueError(f"cpu attention got a {x.dtype} tensor of shape "
                                 f"{tuple(x.shape)}, strides {x.stride()}; expected "
                                 f"[{t}, {heads}, {self.head_dim}] {self.dtype}, rows packed")
        raise AssertionError("unreachable: the fast check and the explanation disagree")
