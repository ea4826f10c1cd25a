"""Shared-prefix (cascade) decode attention equals plain attention over each request's pages."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from radixrt.attention import cascade
from radixrt.attention.base import AttentionMetadata, build_metadata
from radixrt.attention.torch_backend import TorchAttentionBackend
from radixrt.kvcache.pool import KVPool, KVPoolShape


def decode_meta(tables: list[list[int]], seq_lens: list[int], ps: int) -> AttentionMetadata:
    width = max(len(t) for t in tables)
    rows = np.array([t + [0] * (width - len(t)) for t in tables], dtype=np.int32)
    return build_metadata(np.array(seq_lens) - 1, np.ones(len(tables), np.int64), rows, ps)[0]


@pytest.mark.parametrize("ps", [1, 4, 16])
def test_cascade_matches_plain_decode(ps: int, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(ps)
    rng = np.random.default_rng(ps)
    pool = KVPool(KVPoolShape(1, 400, ps, 2, 8), torch.float32, "cpu")
    pool.k_cache[0][:-ps].normal_()
    pool.v_cache[0][:-ps].normal_()
    # Two groups sharing 6 and 9 pages, one loner; tails of various lengths.
    perm = rng.permutation(400).tolist()
    shared_a, shared_b = perm[:6], perm[6:15]
    free = iter(perm[15:])
    tables, seqs = [], []
    for shared, tails in ((shared_a, [1, 3, 2]), (shared_b, [1, 1])):
        for t in tails:
            tables.append(shared + [next(free) for _ in range(t)])
            seqs.append((len(shared) + t - 1) * ps + int(rng.integers(1, ps + 1)))
    tables.append([next(free) for _ in range(5)])
    seqs.append(5 * ps)
    meta = decode_meta(tables, seqs, ps)
    q = torch.randn(len(tables), 4, 8)
    k = torch.randn(len(tables), 2, 8)
    v = torch.randn(len(tables), 2, 8)
    got_backend = TorchAttentionBackend(pool, num_heads=4, head_dim=8)
    got_backend.plan(meta)
    assert [len(g.rows) for g in got_backend.shared_groups] == [3, 2] or \
        sorted(len(g.rows) for g in got_backend.shared_groups) == [2, 3]
    got = got_backend.forward(q, k, v, 0)
    monkeypatch.setattr(cascade, "MIN_SHARED_PAGES", 10**9)
    monkeypatch.setattr("radixrt.attention.torch_backend.find_shared_prefixes",
                        lambda *a: cascade.find_shared_prefixes(*a, min_pages=10**9))
    ref_backend = TorchAttentionBackend(pool, num_heads=4, head_dim=8)
    ref_backend.plan(meta)
    assert not ref_backend.shared_groups
    ref = ref_backend.forward(q, k, v, 0)
    assert torch.allclose(got, ref, atol=1e-5), (got - ref).abs().max()


def test_groups_leave_each_request_its_last_token() -> None:
    rows = np.array([[1, 2, 3, 4, 5], [1, 2, 3, 4, 9]])
    groups, shared = cascade.find_shared_prefixes(rows, np.array([65, 65]), 16, min_pages=1)
    assert shared.tolist() == [4, 4]
    # Same pages but one request ends exactly on a page boundary of the shared part.
    groups, shared = cascade.find_shared_prefixes(rows, np.array([64, 70]), 16, min_pages=1)
    assert shared.tolist() == [3, 3]
    assert cascade.find_shared_prefixes(rows[:1], np.array([65]), 16)[0] == []
