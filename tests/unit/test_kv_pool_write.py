"""KVPool.write: K and V side by side in one projection output go in with one index_copy_
(side_by_side), and land exactly where two separate copies put them."""

from __future__ import annotations

import pytest
import torch

from radixrt.kvcache.pool import KVPool, KVPoolShape, side_by_side


def qkv_views(t: int, q: int, h: int, d: int, dtype: torch.dtype
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The model's k and v: views into one [T, q + 2 h d] projection output."""
    qkv = torch.randn(t, q + 2 * h * d).to(dtype)
    k = qkv[:, q : q + h * d].view(t, h, d)
    v = qkv[:, q + h * d :].view(t, h, d)
    return qkv, k, v


@pytest.mark.parametrize(("t", "src", "kv"), [(1, torch.float32, torch.float32),
                                              (7, torch.float32, torch.bfloat16),
                                              (5, torch.bfloat16, torch.bfloat16)])
@pytest.mark.parametrize("head_major", [False, True])
def test_side_by_side_write_equals_two_copies(t: int, src: torch.dtype, kv: torch.dtype,
                                              head_major: bool) -> None:
    shape = KVPoolShape(num_layers=2, num_pages=6, page_size=4, num_kv_heads=2, head_dim=8)
    one, two = KVPool(shape, kv, "cpu", head_major), KVPool(shape, kv, "cpu", head_major)
    _, k, v = qkv_views(t, 24, 2, 8, src)
    pair = side_by_side(k, v)
    assert pair is not None and pair.shape == (t, 2, 2, 8)
    assert torch.equal(pair[:, 0], k) and torch.equal(pair[:, 1], v)
    slots = torch.randperm(shape.num_slots)[:t]
    one.write(1, slots, k, v)
    two.write(1, slots, k.clone(), v.clone())  # separate tensors: two copies
    for a, b in zip(one.k_cache + one.v_cache, two.k_cache + two.v_cache, strict=True):
        assert torch.equal(a, b)
    assert torch.equal(one.k_cache[1][slots], k.to(kv)) and torch.equal(one.v_cache[1][slots],
                                                                        v.to(kv))
    assert not one.kv_cache[0].any()  # the other layer untouched
    # Paged views read the same rows whatever the layout.
    pages = one.k_pages(1).reshape(-1, 2, 8)
    assert torch.equal(pages[slots], k.to(kv))


def test_head_major_layout_keeps_a_heads_rows_contiguous() -> None:
    shape = KVPoolShape(num_layers=1, num_pages=3, page_size=4, num_kv_heads=2, head_dim=8)
    pool = KVPool(shape, torch.float32, "cpu", head_major=True)
    k = pool.k_cache[0]
    slots = shape.num_slots + shape.page_size
    assert k.shape == (slots, 2, 8) and k.stride() == (8, slots * 8, 1)
    assert pool.v_cache[0].data_ptr() == k.data_ptr() + 2 * slots * 8 * 4


def test_side_by_side_refuses_what_is_not_one_row() -> None:
    qkv, k, v = qkv_views(3, 16, 2, 8, torch.float32)
    assert side_by_side(v, k) is None  # v before k
    assert side_by_side(k, qkv[:, :16].view(3, 2, 8)) is None  # not right after k
    assert side_by_side(k.clone(), v.clone()) is None  # separate tensors
    assert side_by_side(k, v.to(torch.bfloat16)) is None
    assert side_by_side(k[:, :1], v[:, :1]) is None  # heads not packed: gap in the row
    packed = torch.randn(3, 4, 8)  # [T, 2h, d]: k the first h heads of a row, v the rest
    assert side_by_side(packed[:, :2], packed[:, 2:]) is not None
    split = torch.randn(2, 3, 2, 8)  # k rows then v rows, not interleaved by token
    assert side_by_side(split[0], split[1]) is None
