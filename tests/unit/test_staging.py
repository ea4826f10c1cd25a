"""The per-step upload on CPU: no copy, no pinning, shapes and dtypes kept; and the metadata
it builds equals the one built array by array."""

from __future__ import annotations

import numpy as np
import torch

from radixrt.attention.base import build_metadata, build_step_inputs
from radixrt.attention.staging import PinnedHostArrays, Staging, upload_each


def test_cpu_upload_is_views_without_pinning() -> None:
    st = Staging("cpu")
    a = np.arange(6, dtype=np.int32).reshape(2, 3)
    b = np.arange(4, dtype=np.int64)
    ta, tb = st.upload([a, b])
    assert ta.dtype == torch.int32 and ta.shape == (2, 3) and tb.dtype == torch.int64
    assert ta.data_ptr() == a.__array_interface__["data"][0]  # the same memory
    assert not ta.is_pinned() and st.transfers == 0



def test_cpu_host_arrays_are_views_and_fence_is_a_no_op() -> None:
    host = PinnedHostArrays("cpu")
    a = np.arange(5, dtype=np.int32)
    (t,) = host.views([a])
    assert t.data_ptr() == a.__array_interface__["data"][0] and not t.is_pinned()
    host.fence()
    assert torch.equal(t, torch.arange(5, dtype=torch.int32))


def test_step_inputs_match_build_metadata() -> None:
    rng = np.random.default_rng(0)
    start, num_new = np.array([0, 7, 30]), np.array([5, 1, 3])
    rows = rng.permutation(64).astype(np.int32).reshape(4, 16)[:3]
    ids = rng.integers(0, 1000, int(num_new.sum()))
    ref, ref_pos = build_metadata(start, num_new, rows, 4)
    for upload in (Staging("cpu").upload, upload_each("cpu")):
        meta, pos, (t_ids,) = build_step_inputs(start, num_new, rows, 4, upload, [ids])
        assert torch.equal(pos, ref_pos) and t_ids.tolist() == ids.tolist()
        for f in ("start_pos", "num_new", "seq_lens", "cu_new", "page_table", "out_slots"):
            assert torch.equal(getattr(meta, f), getattr(ref, f)), f
            assert getattr(meta, f).dtype == getattr(ref, f).dtype, f
        assert (meta.is_decode, meta.max_seq_len) == (ref.is_decode, ref.max_seq_len) == (
            False, 33)


def test_packed_upload_keeps_values_dtypes_and_alignment() -> None:
    """What the CUDA upload does, on host memory: arrays of several dtypes and shapes (and an
    empty one) packed into one byte buffer, read back as views of their own dtypes."""
    from radixrt.attention.staging import ALIGN, pack_into, pack_layout, unpack

    rng = np.random.default_rng(2)
    arrays = [rng.integers(-5, 5, (3, 5)).astype(np.int32), np.zeros(0, np.int64),
              rng.integers(0, 1 << 40, 7).astype(np.int64), np.array([True, False, True]),
              rng.standard_normal(3).astype(np.float32), np.arange(1, dtype=np.int32)]
    offsets, total = pack_layout(arrays)
    assert all(off % ALIGN == 0 for off in offsets) and total % ALIGN == 0
    assert total >= sum(a.nbytes for a in arrays)
    host = np.full(total + 16, 0xAB, dtype=np.uint8)
    pack_into(host, arrays, offsets)
    views = unpack(torch.from_numpy(host), arrays, offsets)
    for a, t in zip(arrays, views, strict=True):
        assert t.shape == a.shape and t.numpy().dtype == a.dtype
        assert np.array_equal(t.numpy(), a)
