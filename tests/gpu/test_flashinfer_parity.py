"""FlashInfer backend (eager and CUDA-graph decode) against the torch backend, on CUDA.

Three runners load the same weights (bf16) into their own KV pools and run the same steps:
ragged prefills, decodes, prefill chunks on a cached prefix mixed with decodes, and decode
runs that cross page boundaries. Logits must agree within bf16 noise; the graph runner's must
match eager FlashInfer's almost exactly (same kernels, padded rows aside).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
flashinfer = pytest.importorskip("flashinfer")

from radixrt.config import EngineConfig  # noqa: E402
from radixrt.models import gemm_cuda, gemv_cuda  # noqa: E402
from radixrt.testing.batches import batch_from_chunks  # noqa: E402
from radixrt.worker.model_runner import ModelRunner  # noqa: E402

# bf16 rounds each layer's output to ~3 significant digits; different kernels round at
# different places, so compare whole logit rows by relative L2 error.
TOL_VS_TORCH = 3e-2
TOL_GRAPH_VS_EAGER = 1e-2
MAX_SLOTS = 33  # one more request than the largest captured graph
POOL_TOKENS = 16384


def make_runner(path: Path, backend: str, page_size: int, graphs: bool = False) -> ModelRunner:
    cfg = EngineConfig(model_path=str(path), device="cuda", dtype="bfloat16",
                       attention_backend=backend, page_size=page_size, max_total_tokens=POOL_TOKENS,
                       max_running_requests=MAX_SLOTS, cuda_graph_max_bs=32,
                       disable_cuda_graph=not graphs)
    # Each runner times the one-token GEMV and the cuBLASLt algorithms against cuBLAS for
    # itself and may choose differently; these tests compare attention paths, so all use
    # cuBLAS (test_gemv.py and test_lt_gemm.py cover the others).
    envs = (gemv_cuda.ENV, gemm_cuda.ENV)
    was = {e: os.environ.get(e) for e in envs}
    os.environ.update({e: "0" for e in envs})
    try:
        return ModelRunner(cfg)
    finally:
        for e, v in was.items():
            if v is None:
                del os.environ[e]
            else:
                os.environ[e] = v


class Trio:
    """torch / flashinfer eager / flashinfer + CUDA graphs, fed identical batches."""

    def __init__(self, path: Path, page_size: int) -> None:
        self.ps = page_size
        self.ref = make_runner(path, "torch", page_size)
        self.fi = make_runner(path, "flashinfer", page_size)
        self.gr = make_runner(path, "flashinfer", page_size, graphs=True)
        assert self.gr.graphs is not None and self.fi.graphs is None
        self.graphs = self.gr.graphs
        # Disjoint pages per slot, handed out in reverse order.
        self.per_req = POOL_TOKENS // page_size // MAX_SLOTS
        self.seqs: dict[int, list[int]] = {}

    def step(self, slots: list[int], chunks: list[list[int]]) -> list[torch.Tensor]:
        starts = [len(self.seqs.get(s, [])) for s in slots]
        new = [s for s in slots if s not in self.seqs]
        pages = {s: list(range((s + 1) * self.per_req - 1, s * self.per_req - 1, -1))
                 for s in new}
        fb = batch_from_chunks(slots, starts, chunks, pages)
        outs = []
        for runner in (self.ref, self.fi, self.gr):
            runner._apply_updates(fb)
            outs.append(runner.forward(fb).float())
        for s, c in zip(slots, chunks, strict=True):
            self.seqs.setdefault(s, []).extend(c)
        return outs


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def check(outs: list[torch.Tensor], what: str) -> list[list[int]]:
    ref, fi, gr = outs
    for t in outs:
        assert torch.isfinite(t).all(), what
    assert rel_err(fi, ref) < TOL_VS_TORCH, f"{what}: flashinfer vs torch {rel_err(fi, ref):.4f}"
    assert rel_err(gr, fi) < TOL_GRAPH_VS_EAGER, f"{what}: graph vs eager {rel_err(gr, fi):.4f}"
    return [[int(i)] for i in ref.argmax(-1).tolist()]


def run_scenario(path: Path, page_size: int, vocab: int) -> None:
    trio = Trio(path, page_size)
    rng = np.random.default_rng(page_size)
    ids = lambda n: rng.integers(3, vocab, n).tolist()  # noqa: E731
    # 1. Ragged prefill (one 1-token prompt, one exactly two pages long).
    nxt = check(trio.step([0, 1, 2, 3], [ids(37), ids(5), ids(2 * page_size), ids(1)]),
                "prefill")
    # 2. Decode-only step.
    nxt = check(trio.step([0, 1, 2, 3], nxt), "decode")
    # 3. Mixed: prefill chunks on a cached prefix, next to decodes and a fresh prompt.
    check(trio.step([0, 1, 2, 3, 4], [ids(20), nxt[1], ids(9), nxt[3], ids(30)]), "mixed")
    # 4. Decode runs across page boundaries at graph-padded sizes (5 -> 8, 3 -> 4, 1 -> 1).
    for slots in ([0, 1, 2, 3, 4], [1, 3, 4], [2]):
        nxt = [[int(rng.integers(3, vocab))] for _ in slots]
        for t in range(page_size + 3):
            nxt = check(trio.step(slots, nxt), f"decode run {slots} step {t}")
    # 5. A decode batch bigger than the largest graph (32) falls back to eager FlashInfer.
    more = list(range(5, MAX_SLOTS))
    check(trio.step(more, [ids(3) for _ in more]), "prefill of 28 more requests")
    big = [0, 1, 2, 3, 4] + more
    assert len(big) > trio.graphs.max_bs
    check(trio.step(big, [[int(rng.integers(3, vocab))] for _ in big]), "decode beyond graphs")


# head_dim 64 keeps FlashInfer's JIT to the modules the default model and gpu_check warm up.
TINY = {
    "llama": {"head_dim": 64},
    "qwen2": {"head_dim": 64},
    "qwen3": {"head_dim": 64},
    "llama-gqa4": {"head_dim": 64, "num_attention_heads": 8, "num_key_value_heads": 2},
}


@pytest.mark.parametrize("name,page_size", [("llama", 16), ("llama", 1), ("qwen2", 16),
                                            ("qwen3", 16), ("llama-gqa4", 16)])
def test_tiny_models(make_tiny_model, name: str, page_size: int) -> None:
    path = make_tiny_model(name.split("-")[0], **TINY[name])
    run_scenario(path, page_size, vocab=49152)


@pytest.mark.parametrize("kernel", ["fa2", "fa3", "cuda-cores", "xqa"])
def test_each_decode_kernel(make_tiny_model, monkeypatch: pytest.MonkeyPatch,
                            kernel: str) -> None:
    """Every FlashInfer decode kernel the server can be told to use (DECODE_KERNEL_ENV), eager
    and under CUDA graphs, against the torch backend. head_dim 128 and a GQA group of 4: the
    Llama-3-8B head shape, whose modules gpu_check.sh builds before the tests."""
    from radixrt.attention.flashinfer_backend import DECODE_KERNEL_ENV

    monkeypatch.setenv(DECODE_KERNEL_ENV, kernel)
    path = make_tiny_model("llama", head_dim=128, num_attention_heads=8, num_key_value_heads=2)
    run_scenario(path, 16, vocab=49152)


def test_default_model(default_model_weights: Path) -> None:
    run_scenario(default_model_weights, 16, vocab=49152)


def test_graph_capture_covers_configured_sizes(make_tiny_model) -> None:
    runner = make_runner(make_tiny_model("llama", **TINY["llama"]), "flashinfer", 16, graphs=True)
    graphs = runner.graphs
    assert graphs is not None
    assert graphs.batch_sizes == [1, 2, 4, 8, 16, 24, 32]  # cuda_graph_max_bs=32
    assert sorted(graphs.graphs) == graphs.batch_sizes
    assert graphs.pick_batch_size(5) == 8 and graphs.pick_batch_size(32) == 32


def test_staging_one_transfer_per_step() -> None:
    """CUDA: a step's arrays go through one pinned buffer in one copy, values and dtypes
    intact, and alternating buffers are not overwritten while a copy may be in flight."""
    from radixrt.attention.staging import Staging

    st = Staging("cuda")
    rng = np.random.default_rng(1)
    for step in range(5):
        arrays = [rng.integers(0, 1000, (3, 4)).astype(np.int32),
                  rng.integers(0, 1 << 40, 17).astype(np.int64)]
        out = st.upload(arrays)
        assert st.transfers == step + 1
        for a, t in zip(arrays, out, strict=True):
            assert t.is_cuda and t.shape == a.shape
            assert np.array_equal(t.cpu().numpy(), a)
    assert all(b is None or b.is_pinned() for b in st._ring._bufs)  # noqa: SLF001
