"""FlashInfer planning on the CPU: the CSR page lists against the torch backend's view.

No GPU and no flashinfer needed: `build_paged_kv_inputs` is host code, and a stand-in
`flashinfer` module that implements the wrappers' documented semantics in torch (pages
kv_indices[kv_indptr[i]:kv_indptr[i+1]], last page holding kv_last_page_len slots, causal
mask aligned bottom-right) drives FlashInferAttentionBackend end to end against
TorchAttentionBackend.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
import types
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from radixrt.attention.base import AttentionMetadata, build_metadata
from radixrt.attention.flashinfer_backend import (
    PagedKVInputs,
    build_paged_kv_inputs,
    use_tensor_cores,
)
from radixrt.attention.staging import Staging
from radixrt.attention.torch_backend import TorchAttentionBackend
from radixrt.ipc.messages import ForwardBatch
from radixrt.kvcache.pool import KVPool, KVPoolShape
from radixrt.worker.graph_runner import capture_batch_sizes, create_graph_runner, pad_decode_rows
from radixrt.worker.model_runner import ModelRunner

# ----------------------------------------------------------------------------- helpers


def random_batch(rng: np.random.Generator, ps: int, max_pages: int, n_slots: int,
                 decode: bool = False) -> tuple[ForwardBatch, np.ndarray]:
    """A ragged batch and the page table it runs against (distinct pages per slot)."""
    B = int(rng.integers(1, min(n_slots, 6) + 1))
    slots = rng.choice(n_slots, size=B, replace=False).astype(np.int32)
    cap = max_pages * ps
    starts, news = [], []
    for _ in range(B):
        kind = rng.integers(4)
        if decode or kind == 0:  # decode row
            n = 1
        elif kind == 1:  # prefill ending exactly on a page boundary
            n = int(rng.integers(1, 3)) * ps
        else:
            n = int(rng.integers(1, 3 * ps + 2))
        n = min(n, cap - 1)
        if kind == 1 and not decode:
            start = int(rng.integers(0, (cap - n) // ps + 1)) * ps
        else:
            start = int(rng.integers(0 if n > 1 else 1, cap - n + 1))
        starts.append(start)
        news.append(n)
    n_pages = max_pages * n_slots
    table = rng.permutation(n_pages).astype(np.int32).reshape(n_slots, max_pages)
    num_new = np.array(news, np.int32)
    batch = ForwardBatch(
        step=0, slots=slots, start_pos=np.array(starts, np.int32), num_new=num_new,
        input_ids=np.zeros(int(num_new.sum()), np.int32), sample=np.ones(B, bool),
        page_slots=np.zeros(0, np.int32), page_offsets=np.zeros(0, np.int32),
        page_lens=np.zeros(0, np.int32), page_ids=np.zeros(0, np.int32))
    return batch, table


def runner_metadata(batch: ForwardBatch, table: np.ndarray, ps: int) -> AttentionMetadata:
    """The metadata ModelRunner.build_metadata makes for this batch (its own code, no model)."""
    fake = SimpleNamespace(page_size=ps, page_table=table, staging=Staging("cpu"),
                           attn=SimpleNamespace(wants_page_lists=True))
    fake.step_inputs = functools.partial(ModelRunner.step_inputs, fake)  # type: ignore[arg-type]
    meta, _positions = ModelRunner.build_metadata(fake, batch)  # type: ignore[arg-type]
    return meta


def slots_from_csr(inp: PagedKVInputs, i: int, ps: int) -> list[int]:
    lo, hi = int(inp.kv_indptr[i]), int(inp.kv_indptr[i + 1])
    pages = inp.kv_indices[lo:hi].tolist()
    n = (len(pages) - 1) * ps + int(inp.kv_last_page_len[i])
    return [p * ps + o for p in pages for o in range(ps)][:n]


def paged_reference(q: torch.Tensor, k_pages: torch.Tensor, v_pages: torch.Tensor,
                    inp: PagedKVInputs, causal: bool, sm_scale: float) -> torch.Tensor:
    """Attention as FlashInfer's docs define it over the CSR page lists, in float32."""
    ps, hkv = k_pages.shape[1], k_pages.shape[2]
    out = torch.empty(q.shape, dtype=torch.float32)
    for i in range(len(inp.kv_last_page_len)):
        pages = inp.kv_indices[int(inp.kv_indptr[i]): int(inp.kv_indptr[i + 1])].long()
        L = (len(pages) - 1) * ps + int(inp.kv_last_page_len[i])
        k = k_pages[pages].reshape(-1, hkv, k_pages.shape[3])[:L].float()
        v = v_pages[pages].reshape(-1, hkv, v_pages.shape[3])[:L].float()
        q0, q1 = int(inp.qo_indptr[i]), int(inp.qo_indptr[i + 1])
        qi = q[q0:q1].float()
        g = qi.shape[1] // hkv
        k, v = k.repeat_interleave(g, dim=1), v.repeat_interleave(g, dim=1)
        scores = torch.einsum("nhd,lhd->hnl", qi, k) * sm_scale
        if causal:
            n = q1 - q0
            allowed = torch.arange(L)[None, :] <= (L - n + torch.arange(n))[:, None]
            scores = scores.masked_fill(~allowed, float("-inf"))
        out[q0:q1] = torch.einsum("hnl,lhd->nhd", scores.softmax(-1), v)
    return out.to(q.dtype)


# ----------------------------------------------------------------------------- CSR inputs


@pytest.mark.parametrize("ps", [1, 4, 16])
def test_csr_lists_match_page_table_and_torch_backend(ps: int) -> None:
    rng = np.random.default_rng(ps)
    max_pages, n_slots = max(3, 64 // ps), 8
    for trial in range(40):
        batch, table = random_batch(rng, ps, max_pages, n_slots, decode=trial % 4 == 0)
        meta = runner_metadata(batch, table, ps)
        inp = build_paged_kv_inputs(meta)
        B = batch.batch_size
        seq = batch.start_pos.astype(np.int64) + batch.num_new
        assert inp.qo_indptr.tolist() == meta.cu_new.tolist()
        assert np.diff(inp.kv_indptr.numpy()).tolist() == (-(-seq // ps)).tolist()
        assert all(1 <= x <= ps for x in inp.kv_last_page_len.tolist())
        assert inp.kv_lens is not None and inp.kv_lens.tolist() == seq.tolist()
        assert all(t.dtype == torch.int32 for t in inp if t is not None)
        assert len(inp.kv_indices) == int(inp.kv_indptr[-1])
        # What the torch backend gathers for the same metadata.
        pool = KVPool(KVPoolShape(1, max_pages * n_slots, ps, 1, 2), torch.float32, "cpu")
        ref = TorchAttentionBackend(pool, num_heads=1, head_dim=2)
        ref.plan(meta)
        torch_keys: dict[int, list[int]] = {}
        for j, i in enumerate(ref.decode_rows):
            valid = ref.decode_mask[j, 0, 0]
            page_slots = ref.decode_pages[j][:, None] * ps + torch.arange(ps)[None, :]
            torch_keys[i] = page_slots.flatten()[valid].tolist()
        for i, (_t0, _n, key_slots, _mask) in zip(ref.prefill_rows, ref.prefill_plans,
                                                      strict=True):
            if key_slots is not None:
                torch_keys[i] = key_slots.tolist()
        for i in range(B):
            slot = int(batch.slots[i])
            expect = [int(table[slot, p // ps]) * ps + p % ps for p in range(int(seq[i]))]
            got = slots_from_csr(inp, i, ps)
            assert got == expect, (trial, i)
            if i in torch_keys:
                assert got == torch_keys[i], (trial, i)
            # The new tokens' write slots are the tail of the key list.
            lo, hi = int(meta.cu_new[i]), int(meta.cu_new[i + 1])
            assert meta.out_slots[lo:hi].tolist() == got[int(batch.start_pos[i]):]


def test_seq_len_exact_multiple_of_page_size_has_full_last_page() -> None:
    ps = 16
    table = np.arange(4 * 8, dtype=np.int32).reshape(4, 8)[:, ::-1].copy()  # pages out of order
    batch = ForwardBatch(
        step=0, slots=np.array([0, 1, 2], np.int32), start_pos=np.array([0, 31, 47], np.int32),
        num_new=np.array([32, 1, 1], np.int32), input_ids=np.zeros(34, np.int32),
        sample=np.ones(3, bool), page_slots=np.zeros(0, np.int32),
        page_offsets=np.zeros(0, np.int32), page_lens=np.zeros(0, np.int32),
        page_ids=np.zeros(0, np.int32))
    inp = build_paged_kv_inputs(runner_metadata(batch, table, ps))
    assert inp.kv_indptr.tolist() == [0, 2, 4, 7]
    assert inp.kv_last_page_len.tolist() == [16, 16, 16]
    assert inp.kv_indices.tolist() == [7, 6, 15, 14, 23, 22, 21]
    assert inp.qo_indptr.tolist() == [0, 32, 33, 34]


@pytest.mark.parametrize("ps", [1, 16])
@pytest.mark.parametrize("heads", [(4, 2), (8, 2), (3, 3)])
def test_paged_reference_over_csr_matches_torch_backend(ps: int, heads: tuple[int, int]) -> None:
    """FlashInfer's semantics over our CSR lists give the torch backend's attention."""
    hq, hkv = heads
    D = 8
    rng = np.random.default_rng(100 + ps + hq)
    torch.manual_seed(ps + hq)
    max_pages, n_slots = max(3, 64 // ps), 8
    pool = KVPool(KVPoolShape(1, max_pages * n_slots, ps, hkv, D), torch.float32, "cpu")
    pool.k_cache[0].normal_()
    pool.v_cache[0].normal_()
    ref = TorchAttentionBackend(pool, num_heads=hq, head_dim=D)
    for trial in range(8):
        batch, table = random_batch(rng, ps, max_pages, n_slots, decode=trial % 3 == 0)
        meta = runner_metadata(batch, table, ps)
        T = int(batch.num_new.sum())
        q, k, v = torch.randn(T, hq, D), torch.randn(T, hkv, D), torch.randn(T, hkv, D)
        ref.plan(meta)
        expect = ref.forward(q, k, v, 0)  # writes k/v into the pool first
        got = paged_reference(q, pool.k_pages(0), pool.v_pages(0), build_paged_kv_inputs(meta),
                              causal=True, sm_scale=D**-0.5)
        torch.testing.assert_close(got, expect, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- backend


class _FakeWrapper:
    """The part of a FlashInfer paged wrapper the backend uses, per the documented API."""

    log: list[tuple[str, dict[str, Any]]] = []

    def __init__(self, workspace: torch.Tensor, kv_layout: str = "NHD", **kw: Any) -> None:
        assert kv_layout == "NHD" and workspace.dtype == torch.uint8
        self.kind = "decode" if "use_tensor_cores" in kw else "prefill"
        self.kw = kw
        self.inputs: PagedKVInputs | None = None

    def _plan(self, inp: PagedKVInputs, hq: int, hkv: int, d: int, ps: int, kw: dict) -> None:
        assert inp.kv_indptr.device.type == "cpu" and inp.kv_last_page_len.device.type == "cpu"
        assert inp.qo_indptr.device.type == "cpu"
        assert all(t.is_contiguous() and t.dtype == torch.int32 for t in inp if t is not None)
        if self.kind == "prefill":
            # The lengths the planner would otherwise derive in pageable memory.
            lens = kw["seq_lens"]
            assert lens.dtype == torch.int32 and lens.device.type == "cpu"
            assert torch.equal(lens, (inp.kv_indptr[1:] - inp.kv_indptr[:-1] - 1) * ps
                               + inp.kv_last_page_len)
        self.inputs, self.heads, self.ps, self.plan_kw = inp, (hq, hkv, d), ps, kw
        _FakeWrapper.log.append((self.kind, {**self.kw, **kw}))

    def run(self, q: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        assert self.inputs is not None and q.stride(-1) == 1  # rows may be strided (#553)
        k_pages, v_pages = kv
        hq, hkv, d = self.heads
        assert q.shape[1:] == (hq, d) and k_pages.shape[1:] == (self.ps, hkv, d)
        assert q.dtype == self.plan_kw["q_data_type"] and k_pages.dtype == self.plan_kw["kv_data_type"]
        return paged_reference(q, k_pages, v_pages, self.inputs,
                               causal=self.plan_kw.get("causal", False),
                               sm_scale=self.plan_kw["sm_scale"])


class _FakeDecode(_FakeWrapper):
    def __init__(self, workspace: torch.Tensor, kv_layout: str = "NHD",
                 use_cuda_graph: bool = False, use_tensor_cores: bool = False,
                 paged_kv_indptr_buffer: torch.Tensor | None = None,
                 paged_kv_indices_buffer: torch.Tensor | None = None,
                 paged_kv_last_page_len_buffer: torch.Tensor | None = None,
                 backend: str = "auto") -> None:
        assert backend in ("auto", "fa2", "fa3")
        super().__init__(workspace, kv_layout, use_tensor_cores=use_tensor_cores,
                         backend=backend)
        self.bufs = None
        if use_cuda_graph:  # FlashInfer's checks on the fixed buffers
            assert paged_kv_indptr_buffer is not None and paged_kv_indices_buffer is not None
            assert paged_kv_last_page_len_buffer is not None
            assert len(paged_kv_indptr_buffer) == len(paged_kv_last_page_len_buffer) + 1
            self.bufs = (paged_kv_indptr_buffer, paged_kv_indices_buffer,
                         paged_kv_last_page_len_buffer)

    def plan(self, indptr: torch.Tensor, indices: torch.Tensor, last_page_len: torch.Tensor,
             num_qo_heads: int, num_kv_heads: int, head_dim: int, page_size: int,
             **kw: Any) -> None:
        if self.bufs is not None:
            # Graph mode: plan copies into the fixed buffers and the (captured) kernels read
            # those, so run() below reads them too.
            ib, xb, lb = self.bufs
            assert len(last_page_len) == len(lb), "batch size is fixed in CUDA-graph mode"
            assert len(indices) <= len(xb)
            ib.copy_(indptr)
            lb.copy_(last_page_len)
            xb[: len(indices)].copy_(indices)
            indptr, indices, last_page_len = ib.cpu(), xb, lb.cpu()
        qo = torch.arange(len(last_page_len) + 1, dtype=torch.int32)
        self._plan(PagedKVInputs(qo, indptr, indices, last_page_len), num_qo_heads,
                   num_kv_heads, head_dim, page_size, kw)


class _FakePrefill(_FakeWrapper):
    def plan(self, qo_indptr: torch.Tensor, paged_kv_indptr: torch.Tensor,
             paged_kv_indices: torch.Tensor, paged_kv_last_page_len: torch.Tensor,
             num_qo_heads: int, num_kv_heads: int, head_dim_qk: int, page_size: int,
             **kw: Any) -> None:
        self._plan(PagedKVInputs(qo_indptr, paged_kv_indptr, paged_kv_indices,
                                 paged_kv_last_page_len), num_qo_heads, num_kv_heads,
                   head_dim_qk, page_size, kw)


def _fake_xqa(query: torch.Tensor, kv_cache: tuple[torch.Tensor, torch.Tensor],
              workspace_buffer: torch.Tensor, block_tables: torch.Tensor,
              seq_lens: torch.Tensor, max_seq_len: int, bmm1_scale: float = 1.0,
              bmm2_scale: float = 1.0) -> torch.Tensor:
    """flashinfer.decode.xqa_batch_decode_with_kv_cache as documented: one query row per
    request, request i reads its first seq_lens[i] tokens through block_tables[i] (a dense
    [B, max_pages] int32 table whose width times the page size bounds the sequence)."""
    k_pages, v_pages = kv_cache
    B, hq, d = query.shape
    ps, hkv = k_pages.shape[1], k_pages.shape[2]
    assert query.is_contiguous() and k_pages.shape[1:] == (ps, hkv, d)
    assert workspace_buffer.dtype == torch.uint8 and workspace_buffer.numel() > 8 << 20
    assert block_tables.dtype == torch.int32 and block_tables.is_contiguous()
    assert block_tables.shape[0] == B and seq_lens.shape == (B,)
    assert seq_lens.dtype == torch.int32 and seq_lens.is_contiguous()
    lens = seq_lens.tolist()
    assert max(lens) <= block_tables.shape[1] * ps
    _FakeWrapper.log.append(("xqa", {"bmm1_scale": bmm1_scale, "bmm2_scale": bmm2_scale}))
    out = torch.empty(query.shape, dtype=torch.float32)
    for i, L in enumerate(lens):
        pages = block_tables[i, : -(-L // ps)].long()
        k = k_pages[pages].reshape(-1, hkv, d)[:L].float().repeat_interleave(hq // hkv, 1)
        v = v_pages[pages].reshape(-1, hkv, d)[:L].float().repeat_interleave(hq // hkv, 1)
        scores = torch.einsum("hd,lhd->hl", query[i].float(), k) * bmm1_scale
        out[i] = torch.einsum("hl,lhd->hd", scores.softmax(-1), v) * bmm2_scale
    return out.to(query.dtype)


@pytest.fixture
def fake_flashinfer(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    mod = types.ModuleType("flashinfer")
    mod.BatchDecodeWithPagedKVCacheWrapper = _FakeDecode  # type: ignore[attr-defined]
    mod.BatchPrefillWithPagedKVCacheWrapper = _FakePrefill  # type: ignore[attr-defined]
    mod.decode = SimpleNamespace(xqa_batch_decode_with_kv_cache=_fake_xqa)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "flashinfer", mod)
    _FakeWrapper.log = []
    return mod


@pytest.mark.parametrize(("ps", "kernel"), [(1, "auto"), (16, "auto"), (16, "xqa")])
@pytest.mark.parametrize("heads", [(4, 2), (8, 2)])
def test_backend_matches_torch_backend(fake_flashinfer: types.ModuleType, ps: int,
                                       kernel: str, heads: tuple[int, int]) -> None:
    from radixrt.attention.flashinfer_backend import FlashInferAttentionBackend

    hq, hkv = heads
    D, dtype = 16, torch.bfloat16
    rng = np.random.default_rng(7 + ps)
    torch.manual_seed(ps)
    max_pages, n_slots = max(3, 64 // ps), 8
    shape = KVPoolShape(2, max_pages * n_slots, ps, hkv, D)
    pools = [KVPool(shape, dtype, "cpu") for _ in range(2)]
    for layer in range(2):  # the same "cached prefix" KV in both pools
        for cache in ("k_cache", "v_cache"):
            init = torch.randn_like(getattr(pools[0], cache)[layer])
            for p in pools:
                getattr(p, cache)[layer].copy_(init)
    cfg = SimpleNamespace(num_heads=hq)
    fi = FlashInferAttentionBackend(pools[0], cfg, None, decode_kernel=kernel)  # type: ignore[arg-type]
    ref = TorchAttentionBackend(pools[1], num_heads=hq, head_dim=D)
    if kernel == "auto":
        assert fi.decode_wrapper.kw["use_tensor_cores"] == (hq // hkv >= 4)
        assert fi.decode_wrapper.kw["backend"] == ("fa2" if hq // hkv >= 4 else "auto")
    for trial in range(6):
        batch, table = random_batch(rng, ps, max_pages, n_slots, decode=trial % 2 == 0)
        meta = runner_metadata(batch, table, ps)
        T = int(batch.num_new.sum())
        fi.plan(meta)
        ref.plan(meta)
        xqa = kernel == "xqa" and meta.is_decode
        if not xqa:
            kind, kw = _FakeWrapper.log[-1]
            tc = fi.decode_kwargs["use_tensor_cores"]
            if meta.is_decode and tc:
                # Tensor-core decode: FlashInfer's prefill kernel over one-token queries,
                # through a prefill wrapper of the decode kernel's backend, not causal.
                assert (kind, kw["causal"], kw["backend"]) == (
                    "prefill", False, fi.decode_kwargs["backend"])
            elif meta.is_decode:
                assert kind == "decode" and kw["use_tensor_cores"] is False
            else:
                assert kind == "prefill" and kw["causal"] is True
            assert kw["sm_scale"] == D**-0.5 and kw["q_data_type"] == dtype
        for layer in range(2):
            q = torch.randn(T, hq, D, dtype=dtype)
            k, v = torch.randn(T, hkv, D, dtype=dtype), torch.randn(T, hkv, D, dtype=dtype)
            got = fi.forward(q, k, v, layer)
            expect = ref.forward(q, k, v, layer)
            torch.testing.assert_close(got.float(), expect.float(), atol=2e-2, rtol=2e-2)
            if xqa:  # decode-only steps went through xqa, at the softmax scale
                assert _FakeWrapper.log[-1] == ("xqa", {"bmm1_scale": D**-0.5, "bmm2_scale": 1.0})
    for layer in range(2):  # both wrote the same new KV at the same slots
        assert torch.equal(pools[0].k_cache[layer], pools[1].k_cache[layer])
        assert torch.equal(pools[0].v_cache[layer], pools[1].v_cache[layer])


def test_backend_refuses_float32(fake_flashinfer: types.ModuleType) -> None:
    from radixrt.attention.flashinfer_backend import FlashInferAttentionBackend

    pool = KVPool(KVPoolShape(1, 4, 16, 2, 8), torch.float32, "cpu")
    with pytest.raises(RuntimeError, match="bfloat16"):
        FlashInferAttentionBackend(pool, SimpleNamespace(num_heads=4), None)  # type: ignore[arg-type]


def test_module_imports_without_flashinfer_and_backend_says_what_is_missing(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess

    # A fresh interpreter where `import flashinfer` fails: our modules still import.
    code = ("import sys; sys.modules['flashinfer'] = None; "
            "import radixrt.attention.flashinfer_backend, radixrt.worker.graph_runner")
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(repo), *filter(None, [os.environ.get("PYTHONPATH")])])}
    subprocess.run([sys.executable, "-c", code], check=True, cwd=repo, env=env)
    from radixrt.attention.flashinfer_backend import FlashInferAttentionBackend

    monkeypatch.setitem(sys.modules, "flashinfer", None)
    pool = KVPool(KVPoolShape(1, 4, 16, 2, 8), torch.bfloat16, "cpu")
    with pytest.raises(RuntimeError, match="flashinfer-python"):
        FlashInferAttentionBackend(pool, SimpleNamespace(num_heads=4), None)  # type: ignore[arg-type]


def test_tensor_core_rule() -> None:
    assert not use_tensor_cores(9, 3)  # SmolLM2: group 3
    assert use_tensor_cores(32, 8)  # Llama-3-8B: group 4
    assert not use_tensor_cores(4, 4)


@pytest.mark.parametrize(("kernel", "expect"), [
    ("fa2", {"use_tensor_cores": True, "backend": "fa2"}),
    ("fa3", {"use_tensor_cores": True, "backend": "fa3"}),
    ("cuda-cores", {"use_tensor_cores": False, "backend": "auto"}),
])
def test_decode_kernel_choice_reaches_eager_and_graph_wrappers(
        fake_flashinfer: types.ModuleType, monkeypatch: pytest.MonkeyPatch, kernel: str,
        expect: dict[str, Any]) -> None:
    from radixrt.attention.flashinfer_backend import (
        DECODE_KERNEL_ENV,
        FlashInferAttentionBackend,
    )

    pool = KVPool(KVPoolShape(1, 8, 16, 2, 8), torch.bfloat16, "cpu")
    cfg = SimpleNamespace(num_heads=8)
    monkeypatch.setenv(DECODE_KERNEL_ENV, kernel)
    fi = FlashInferAttentionBackend(pool, cfg, None)  # type: ignore[arg-type]
    monkeypatch.delenv(DECODE_KERNEL_ENV)
    fi.init_capture(max_batch_size=2, max_pages_per_req=2)
    wrappers = [fi.decode_wrapper, fi._graph_wrapper(2)]
    for w in wrappers:
        assert {k: w.kw[k] for k in expect} == expect
    # The argument wins over the environment.
    monkeypatch.setenv(DECODE_KERNEL_ENV, "fa3")
    fi = FlashInferAttentionBackend(pool, cfg, None, decode_kernel="cuda-cores")  # type: ignore[arg-type]
    assert fi.decode_wrapper.kw["use_tensor_cores"] is False


def test_unknown_decode_kernel_is_refused_with_the_choices(
        fake_flashinfer: types.ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    from radixrt.attention.flashinfer_backend import (
        DECODE_KERNEL_ENV,
        FlashInferAttentionBackend,
    )

    pool = KVPool(KVPoolShape(1, 8, 16, 2, 8), torch.bfloat16, "cpu")
    monkeypatch.setenv(DECODE_KERNEL_ENV, "fa4")
    with pytest.raises(ValueError, match="fa4.*auto, fa2, fa3, cuda-cores, xqa"):
        FlashInferAttentionBackend(pool, SimpleNamespace(num_heads=8), None)  # type: ignore[arg-type]


@pytest.mark.parametrize(("page_size", "head_dim", "says"), [
    (1, 64, "page sizes"), (8, 64, "page sizes"), (16, 72, "head_dim"), (16, 512, "head_dim")])
def test_xqa_refuses_shapes_it_cannot_run(fake_flashinfer: types.ModuleType, page_size: int,
                                          head_dim: int, says: str) -> None:
    from radixrt.attention.flashinfer_backend import FlashInferAttentionBackend

    pool = KVPool(KVPoolShape(1, 8, page_size, 2, head_dim), torch.bfloat16, "cpu")
    with pytest.raises(ValueError, match=f"xqa.*{says}"):
        FlashInferAttentionBackend(pool, SimpleNamespace(num_heads=8), None,  # type: ignore[arg-type]
                                   decode_kernel="xqa")


# ----------------------------------------------------------------------------- CUDA-graph helpers


def test_capture_batch_sizes() -> None:
    assert capture_batch_sizes(128) == [1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128]
    assert capture_batch_sizes(1) == [1]
    assert capture_batch_sizes(0) == []
    assert capture_batch_sizes(100) == [1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 100]
    assert capture_batch_sizes(256)[-3:] == [128, 192, 256]
    assert capture_batch_sizes(300)[-3:] == [192, 256, 300]


@pytest.mark.parametrize("ps", [1, 16])
def test_padded_decode_inputs_point_padding_at_scratch(ps: int) -> None:
    """A decode batch padded on the host for a graph: the real rows as before, the padding
    rows one-token requests at position 0 of the scratch page, all in the one upload."""
    rng = np.random.default_rng(3)
    max_pages, n_slots = 8, 8
    batch, table = random_batch(rng, ps, max_pages, n_slots, decode=True)
    n, scratch = batch.batch_size, max_pages * n_slots
    fake = SimpleNamespace(page_size=ps, page_table=table, staging=Staging("cpu"),
                           pool=SimpleNamespace(scratch_page=scratch),
                           attn=SimpleNamespace(wants_page_lists=True))
    meta, pos, (rows, ids, slots) = ModelRunner.step_inputs(fake, batch)  # type: ignore[arg-type]
    pmeta, ppos, (prows, pids, pslots) = ModelRunner.step_inputs(
        fake, batch, n + 5)  # type: ignore[arg-type]
    assert pmeta.batch_size == n + 5 and pmeta.is_decode and pmeta.num_new_host == [1] * (n + 5)
    assert pmeta.out_slots[:n].tolist() == meta.out_slots.tolist()
    assert pmeta.out_slots[n:].tolist() == [scratch * ps] * 5
    assert ppos.tolist() == pos.tolist() + [0] * 5 and pids.tolist() == ids.tolist() + [0] * 5
    assert torch.equal(prows, rows) and torch.equal(pslots, slots)  # sampling rows: the real
    inp, padded = build_paged_kv_inputs(meta), build_paged_kv_inputs(pmeta)
    assert len(padded.kv_last_page_len) == n + 5 and len(padded.kv_indptr) == n + 6
    assert padded.qo_indptr.tolist() == list(range(n + 6))
    assert all(t.dtype == torch.int32 for t in padded)
    for i in range(n):
        assert slots_from_csr(padded, i, ps) == slots_from_csr(inp, i, ps)
    for i in range(n, n + 5):
        assert slots_from_csr(padded, i, ps) == [scratch * ps]
    start, num_new, page_rows = pad_decode_rows(np.zeros(0, np.int64), np.zeros((0, 1), np.int32),
                                                3, scratch)
    empty, _ = build_metadata(start, num_new, page_rows, ps)
    assert all(slots_from_csr(build_paged_kv_inputs(empty), i, ps) == [scratch * ps]
               for i in range(3))
    with pytest.raises(ValueError):
        ModelRunner.step_inputs(fake, batch, n - 1)  # type: ignore[arg-type]


class EagerGraph:
    """Stands in for a CUDA graph on the CPU: replay re-runs the captured forward, which
    reads the graph runner's static buffers and the backend's plan, into the static output."""

    def __init__(self, fn: Any, out: torch.Tensor) -> None:
        self.fn, self.out, self.replays = fn, out, 0

    def replay(self) -> None:
        self.out.copy_(self.fn())
        self.replays += 1


def eager_record(fn: Any) -> tuple[EagerGraph, torch.Tensor]:
    out = fn()
    return EagerGraph(fn, out), out


@pytest.mark.parametrize("backend", ["flashinfer", "flashinfer-xqa", "torch", "cpu"])
def test_graph_runner_replays_padded_batches(backend: str, make_tiny_model: Any,
                                             request: pytest.FixtureRequest,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The model runner's one graph runner, through each backend's graph hooks, on the CPU:
    padding to captured sizes, static buffers reused, logits equal to the eager torch path."""
    from radixrt.attention.flashinfer_backend import DECODE_KERNEL_ENV
    from radixrt.config import EngineConfig
    from radixrt.ipc.messages import NewSlot
    from radixrt.sampling_params import SamplingParams

    ps = 4
    if backend.startswith("flashinfer"):
        request.getfixturevalue("fake_flashinfer")
    if backend == "flashinfer-xqa":  # xqa's graphs read fixed page-table buffers
        monkeypatch.setenv(DECODE_KERNEL_ENV, "xqa")
        backend, ps = "flashinfer", 16
    cfg = EngineConfig(model_path=str(make_tiny_model("llama")), dtype="bfloat16", page_size=ps,
                       max_total_tokens=max(1024, 160 * ps),  # page ids up to 149 below
                       max_running_requests=8, cuda_graph_max_bs=8)
    ref = ModelRunner(cfg)
    gr = ModelRunner(cfg.replace(attention_backend=backend))
    assert ref.graphs is None and gr.graphs is None  # no CUDA here
    # The scratch page past its first slot, as the runner's warm-up prefill left it.
    scratch = gr.pool.scratch_page * ps
    scratch_tail = gr.pool.k_cache[0][scratch + 1 : scratch + ps].clone()
    graphs = gr.graphs = create_graph_runner(gr, record=eager_record)
    assert graphs is not None
    assert graphs.batch_sizes == [1, 2, 4, 8] and graphs.max_bs == 8
    static = [t.data_ptr() for t in (graphs.input_ids, graphs.positions, graphs.out_slots)]
    outputs = {bs: graphs.outputs[bs].data_ptr() for bs in graphs.batch_sizes}
    rng = np.random.default_rng(0)
    lens: dict[int, int] = {}

    def step(slots: list[int], chunks: list[list[int]], sample: list[bool] | None = None
             ) -> tuple[torch.Tensor, torch.Tensor]:
        new = [s for s in slots if s not in lens]
        pages = {s: list(range((s + 1) * 30 - 1, s * 30 - 1, -1)) for s in new}
        fb = ForwardBatch(
            step=0, slots=np.array(slots, np.int32),
            start_pos=np.array([lens.get(s, 0) for s in slots], np.int32),
            num_new=np.array([len(c) for c in chunks], np.int32),
            input_ids=np.concatenate([np.array(c, np.int32) for c in chunks]),
            sample=np.array(sample if sample is not None else [True] * len(slots)),
            page_slots=np.array(list(pages), np.int32),
            page_offsets=np.zeros(len(pages), np.int32),
            page_lens=np.array([len(p) for p in pages.values()], np.int32),
            page_ids=np.array([x for p in pages.values() for x in p], np.int32),
            new_slots=[NewSlot(s, SamplingParams(temperature=0)) for s in new])
        outs = []
        for runner in (ref, gr):
            runner._apply_updates(fb)
            outs.append(runner.forward(fb).float())
        for s, c in zip(slots, chunks, strict=True):
            lens[s] = lens.get(s, 0) + len(c)
        return outs[0], outs[1]

    def close(a: torch.Tensor, b: torch.Tensor) -> bool:
        return float((a - b).norm() / b.norm()) < 2e-2

    r, g = step([0, 1, 2, 3, 4], [rng.integers(3, 49152, n).tolist() for n in (9, 4, 1, 12, 7)])
    assert close(g, r) and graphs.replays == 0  # a prefill runs eagerly
    replays = 0
    for slots, bs in (([0, 1, 2, 3, 4], 8), ([1, 3, 4], 4), ([2], 1), ([0, 1], 2)):
        for _ in range(ps + 1):  # crosses a page boundary
            r, g = step(slots, [[int(x)] for x in r.argmax(-1)[: len(slots)]] if
                        r.shape[0] == len(slots) else [[5]] * len(slots))
            assert g.shape == r.shape == (len(slots), 49152)
            assert close(g, r)
        replays += ps + 1
        assert graphs.graphs[bs].replays >= ps + 1
    assert sum(gr_.replays for gr_ in graphs.graphs.values()) == replays == graphs.replays
    # Every replay reused the same static buffers and outputs.
    assert static == [t.data_ptr() for t in (graphs.input_ids, graphs.positions,
                                             graphs.out_slots)]
    assert outputs == {bs: graphs.outputs[bs].data_ptr() for bs in graphs.batch_sizes}
    if os.environ.get(DECODE_KERNEL_ENV) == "xqa":  # the graphs' decode ran through xqa
        assert any(kind == "xqa" for kind, _ in _FakeWrapper.log)
    # A decode batch where one row does not sample: its logits are gathered (rows 0 and 2).
    r, g = step([0, 1, 2], [[7], [8], [9]], sample=[True, False, True])
    assert g.shape == r.shape == (2, 49152) and close(g, r)
    # Every row samples: the sampler reads the graph's output rows in place (no gather), and
    # forward() hands its caller a copy all the same.
    fb = ForwardBatch(step=0, slots=np.array([0, 1], np.int32),
                      start_pos=np.array([lens[0], lens[1]], np.int32),
                      num_new=np.ones(2, np.int32), input_ids=np.array([5, 6], np.int32),
                      sample=np.ones(2, bool), page_slots=np.zeros(0, np.int32),
                      page_offsets=np.zeros(0, np.int32), page_lens=np.zeros(0, np.int32),
                      page_ids=np.zeros(0, np.int32))
    gr._apply_updates(fb)
    view = gr._forward(fb)[0]
    assert view.data_ptr() == graphs.outputs[2].data_ptr() and view.shape == (2, 49152)
    assert gr.forward(fb).data_ptr() != graphs.outputs[2].data_ptr()
    # A one-token chunk of a prompt that asked for prompt logprobs, beside a decode: the
    # graph's rows are gathered for both, and the logprobs equal the eager path's.
    replayed = graphs.replays
    # (the same positions again: the reference runner never ran the step above)
    fb = dataclasses.replace(fb, sample=np.array([True, False]),
                             prompt_lp_rows=np.array([1], np.int32),
                             prompt_lp_targets=np.array([42], np.int32),
                             prompt_lp_num=np.array([0, 1], np.int32), prompt_lp_top=2)
    want, got = ref.launch(fb).result(), gr.launch(fb).result()
    assert graphs.replays == replayed + 1 and got.prompt_logprobs is not None
    assert got.prompt_top_ids is not None and got.prompt_top_ids.shape == (1, 2)
    assert got.prompt_logprobs[0] == pytest.approx(want.prompt_logprobs[0], rel=1e-2)  # bf16
    assert got.prompt_top_logprobs[0] == pytest.approx(want.prompt_top_logprobs[0], rel=1e-2)
    assert got.next_ids[0] >= 0 and got.next_ids[1] == -1  # (bf16 near-ties: ids may differ)
    # The padding rows wrote only the scratch page's first slot.
    assert torch.equal(gr.pool.k_cache[0][scratch + 1 : scratch + ps], scratch_tail)


def test_large_decode_graphs_plan_without_split_kv(fake_flashinfer: types.ModuleType,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Graphs of at least unsplit_from rows plan with disable_split_kv (same partition, no
    merge kernel); smaller graphs, eager steps and the A/B switch keep FlashInfer's split."""
    from radixrt.attention import flashinfer_backend as fb

    pool = KVPool(KVPoolShape(1, 64, 16, 2, 8), torch.bfloat16, "cpu")
    fi = fb.FlashInferAttentionBackend(pool, SimpleNamespace(num_heads=8), None)  # type: ignore[arg-type]
    assert fi.decode_kwargs == {"use_tensor_cores": True, "backend": "fa2"}
    assert fi.unsplit_from is None  # on a CPU there are no SMs to count
    fi.unsplit_from = 4
    fi.init_capture(max_batch_size=8, max_pages_per_req=2)

    def planned(bs: int) -> dict[str, Any]:
        meta, _ = build_metadata(np.full(bs, 5), np.ones(bs, np.int64),
                                 np.arange(2 * bs).reshape(bs, 2), 16)
        fi.prepare_for_replay(meta)
        kind, kw = _FakeWrapper.log[-1]
        assert kind == "decode"
        return kw

    assert planned(8).get("disable_split_kv") is True
    assert planned(4).get("disable_split_kv") is True
    assert "disable_split_kv" not in planned(2)
    monkeypatch.setattr(fb, "unsplit_graphs", False)
    assert "disable_split_kv" not in planned(8)
    meta, _ = build_metadata(np.full(8, 5), np.ones(8, np.int64), np.arange(16).reshape(8, 2), 16)
    fi.plan(meta)  # eager: FlashInfer decides
    assert "disable_split_kv" not in _FakeWrapper.log[-1][1]
