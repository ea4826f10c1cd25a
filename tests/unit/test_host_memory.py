"""The KV pool's host memory: one zeroed arena on transparent huge pages, cut into layers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from radixrt.kvcache.host_memory import HUGE_PAGE, advise_huge_pages, zeros_huge
from radixrt.kvcache.pool import KVPool, KVPoolShape

THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def anon_huge_kib() -> int:
    text = Path("/proc/self/smaps_rollup").read_text()
    return int(text.split("AnonHugePages:")[1].split()[0])


def test_pool_layers_are_disjoint_zeroed_views() -> None:
    shape = KVPoolShape(num_layers=3, num_pages=5, page_size=4, num_kv_heads=2, head_dim=8)
    pool = KVPool(shape, torch.bfloat16, "cpu")
    tensors = pool.k_cache + pool.v_cache
    assert len(tensors) == 6
    for t in tensors:
        assert t.shape == (shape.num_slots + shape.page_size, 2, 8)
        assert t.is_contiguous() and t.dtype == torch.bfloat16
        assert not t.any()
    # Writing one layer's K leaves every other tensor untouched.
    slots = torch.tensor([0, 23])
    pool.write(1, slots, torch.ones(2, 2, 8), torch.full((2, 2, 8), 2.0))
    assert pool.k_cache[1][slots].eq(1).all() and pool.v_cache[1][slots].eq(2).all()
    assert int(pool.k_cache[1].count_nonzero()) == 32
    for i, t in enumerate(tensors):
        if t is not pool.k_cache[1] and t is not pool.v_cache[1]:
            assert not t.any(), i


@pytest.mark.skipif(not THP.exists() or "[never]" in THP.read_text(),
                    reason="this kernel has transparent huge pages off")
def test_arena_gets_huge_pages() -> None:
    before = anon_huge_kib()
    t = zeros_huge(16 * HUGE_PAGE // 4, torch.float32)  # 32 MiB
    assert not t.any() and t.data_ptr() % HUGE_PAGE == 0
    # At least most of the aligned interior is backed by 2 MiB pages now.
    assert anon_huge_kib() - before >= 8 * HUGE_PAGE // 1024
    del t


def test_arena_survives_its_creator_and_small_ones_are_plain() -> None:
    t = zeros_huge(HUGE_PAGE, torch.bfloat16)  # the mapping lives as long as the tensor
    t[-1] = 3.0
    assert t.view(-1)[-1].item() == 3.0 and t.sum().item() == 3.0
    small = zeros_huge(10, torch.float32)
    assert small.shape == (10,) and not small.any()


def test_advice_needs_a_cpu_tensor_with_a_whole_huge_page() -> None:
    assert not advise_huge_pages(torch.zeros(16))  # smaller than one huge page
    if torch.cuda.is_available():
        assert not advise_huge_pages(torch.zeros(HUGE_PAGE, device="cuda"))
