"""KV pool: per layer, K and V for num_pages * page_size token slots."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from radixrt.kvcache.host_memory import zeros_huge


@dataclass(frozen=True)
class KVPoolShape:
    num_layers: int
    num_pages: int
    page_size: int
    num_kv_heads: int
    head_dim: int

    @property
    def num_slots(self) -> int:
        return self.num_pages * self.page_size

    def bytes_per_page(self, dtype: torch.dtype) -> int:
        elem = torch.empty((), dtype=dtype).element_size()
        return 2 * self.num_layers * self.page_size * self.num_kv_heads * self.head_dim * elem


class KVPool:
    """kv_cache[layer]: [2, num_slots + page_size, kv_heads, head_dim], K then V;
    k_cache[layer] / v_cache[layer] are its two halves.

    One extra page at the end is scratch: padded (CUDA-graph) batch entries write there, so
    they never touch a real request's KV. K and V of a layer share one tensor so that a step's
    new K and V, when they sit side by side in the qkv projection's output, go in with one
    index_copy_ (one kernel a layer instead of two on CUDA).

    head_major stores each layer as [2, kv_heads, slots, head_dim] behind the same logical
    views (then strided): one head's rows of a page, and of consecutive pages, are contiguous.
    The CPU kernels read a head at a time, and a decode step streams its KV from DRAM ~1.3-2x
    faster that way (bench/bench_attention_cpu.py); FlashInfer wants token-major (NHD) pages.
    """

    def __init__(self, shape: KVPoolShape, dtype: torch.dtype, device: str | torch.device,
                 head_major: bool = False) -> None:
        self.shape = shape
        self.dtype = dtype
        self.device = torch.device(device)
        self.head_major = head_major
        slots = shape.num_slots + shape.page_size
        h, d = shape.num_kv_heads, shape.head_dim
        stored = (2, h, slots, d) if head_major else (2, slots, h, d)
        # Zeroed: attention reads whole pages and masks the unwritten tail of the last one, and
        # a masked NaN from uninitialised memory would still poison the output (0 * NaN).
        if self.device.type == "cpu":
            # One arena on huge pages (see host_memory.py), cut into the layers.
            n = 2 * slots * h * d
            arena = zeros_huge(shape.num_layers * n, dtype)
            layers = [arena[i * n:(i + 1) * n].view(stored) for i in range(shape.num_layers)]
        else:
            layers = [torch.zeros(stored, dtype=dtype, device=device)
                      for _ in range(shape.num_layers)]
        self.kv_cache = [x.transpose(1, 2) for x in layers] if head_major else layers
        self.k_cache = [kv[0] for kv in self.kv_cache]
        self.v_cache = [kv[1] for kv in self.kv_cache]

    @property
    def scratch_page(self) -> int:
        return self.shape.num_pages

    def write(self, layer_id: int, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """K/V rows [T, kv_heads, head_dim] of new tokens into their slots."""
        pair = side_by_side(k, v)
        if pair is not None:
            self.kv_cache[layer_id].index_copy_(1, slots, pair.transpose(0, 1).to(self.dtype))
            return
        self.k_cache[layer_id].index_copy_(0, slots, k.to(self.dtype))
        self.v_cache[layer_id].index_copy_(0, slots, v.to(self.dtype))

    # Paged views [num_pages + 1, page_size, kv_heads, head_dim] (NHD layout, as FlashInfer wants).
    def k_pages(self, layer_id: int) -> torch.Tensor:
        s = self.shape
        return self.k_cache[layer_id].view(s.num_pages + 1, s.page_size, s.num_kv_heads, s.head_dim)

    def v_pages(self, layer_id: int) -> torch.Tensor:
        s = self.shape
        return self.v_cache[layer_id].view(s.num_pages + 1, s.page_size, s.num_kv_heads, s.head_dim)


def side_by_side(k: torch.Tensor, v: torch.Tensor) -> torch.Tensor | None:
    """k and v as one [T, 2, heads, dim] view when v directly follows k in every token's row
    (both views into one qkv projection output, heads packed), else None."""
    if k.dim() != 3 or k.shape != v.shape or k.dtype != v.dtype or k.device != v.device:
        return None
    t, h, d = k.shape
    if k.stride() != v.stride() or k.stride()[1:] != (d, 1):
        return None
    if k.untyped_storage().data_ptr() != v.untyped_storage().data_ptr():
        return None
    if v.data_ptr() != k.data_ptr() + h * d * k.element_size():
        return None
    return k.as_strided((t, 2, h, d), (k.stride(0), h * d, d, 1))
