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
    """k_cache[layer] / v_cache[layer]: [num_slots + page_size, kv_heads, head_dim].

    One extra page at the end is scratch: padded (CUDA-graph) batch entries write there, so
    they never touch a real request's KV.
    """

    def __init__(self, shape: KVPoolShape, dtype: torch.dtype, device: str | torch.device) -> None:
        self.shape = shape
        self.dtype = dtype
        self.device = torch.device(device)
        slots = shape.num_slots + shape.page_size
        per_layer = (slots, shape.num_kv_heads, shape.head_dim)
        # Zeroed: attention reads whole pages and masks the unwritten tail of the last one, and
        # a masked NaN from uninitialised memory would still poison the output (0 * NaN).
        if self.device.type == "cpu":
            # One arena on huge pages (see host_memory.py), cut into the layers' K and V.
            n = slots * shape.num_kv_heads * shape.head_dim
            arena = zeros_huge(2 * shape.num_layers * n, dtype)
            views = [arena[i * n:(i + 1) * n].view(per_layer) for i in range(2 * shape.num_layers)]
            self.k_cache, self.v_cache = views[:shape.num_layers], views[shape.num_layers:]
        else:
            self.k_cache = [torch.zeros(per_layer, dtype=dtype, device=device)
                            for _ in range(shape.num_layers)]
            self.v_cache = [torch.zeros(per_layer, dtype=dtype, device=device)
                            for _ in range(shape.num_layers)]

    @property
    def scratch_page(self) -> int:
        return self.shape.num_pages

    def write(self, layer_id: int, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        self.k_cache[layer_id].index_copy_(0, slots, k.to(self.dtype))
        self.v_cache[layer_id].index_copy_(0, slots, v.to(self.dtype))

    # Paged views [num_pages + 1, page_size, kv_heads, head_dim] (NHD layout, as FlashInfer wants).
    def k_pages(self, layer_id: int) -> torch.Tensor:
        s = self.shape
        return self.k_cache[layer_id].view(s.num_pages + 1, s.page_size, s.num_kv_heads, s.head_dim)

    def v_pages(self, layer_id: int) -> torch.Tensor:
        s = self.shape
        return self.v_cache[layer_id].view(s.num_pages + 1, s.page_size, s.num_kv_heads, s.head_dim)
