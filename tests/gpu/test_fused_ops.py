"""FlashInfer's fused elementwise kernels against the torch versions (radixrt/models/fused_cuda.py),
op by op."""

from __future__ import annotations

import pytest
import torch

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
pytest.importorskip("flashinfer")

from radixrt.models import fused_cuda as fused  # noqa: E402

DEV = torch.device("cuda")


def both(monkeypatch: pytest.MonkeyPatch, fn, *args):  # noqa: ANN001, ANN202
    """fn(*args) with the FlashInfer kernel and with the torch path (fresh copies each)."""
    assert fused.flashinfer_for(DEV) is not None
    got = fn(*[a.clone() if isinstance(a, torch.Tensor) else a for a in args])
    monkeypatch.setenv(fused.ENV, "0")
    assert fused.flashinfer_for(DEV) is None
    ref = fn(*[a.clone() if isinstance(a, torch.Tensor) else a for a in args])
    monkeypatch.setenv(fused.ENV, "1")
    return got, ref


def close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-2) -> bool:
    return float((a.float() - b.float()).norm() / b.float().norm()) < tol


@pytest.mark.parametrize("t", [1, 37, 512])
def test_rms_norm_and_add(monkeypatch: pytest.MonkeyPatch, t: int) -> None:
    x = torch.randn(t, 4096, dtype=torch.bfloat16, device=DEV)
    r = torch.randn(t, 4096, dtype=torch.bfloat16, device=DEV)
    w = torch.rand(4096, dtype=torch.bfloat16, device=DEV) + 0.5
    got, ref = both(monkeypatch, fused.rms_norm, x, w, 1e-5)
    assert close(got, ref)
    (gx, gr), (rx, rr) = both(monkeypatch, fused.add_rms_norm, x, r, w, 1e-5)
    assert close(gr, rr, 1e-3) and close(gx, rx)


def test_silu_and_mul(monkeypatch: pytest.MonkeyPatch) -> None:
    x = torch.randn(64, 2 * 14336, dtype=torch.bfloat16, device=DEV)
    got, ref = both(monkeypatch, fused.silu_and_mul, x)
    assert got.shape == (64, 14336) and close(got, ref)


def test_rope_with_cos_sin_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    d, max_pos = 128, 4096
    inv = 1.0 / (500000.0 ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
    freqs = torch.outer(torch.arange(max_pos, dtype=torch.float64), inv)
    cos, sin = freqs.cos().float().to(DEV), freqs.sin().float().to(DEV)
    cos_sin = torch.cat([cos, sin], -1)
    pos = torch.randint(0, max_pos, (33,), device=DEV)
    q = torch.randn(33, 32, d, dtype=torch.bfloat16, device=DEV)
    k = torch.randn(33, 8, d, dtype=torch.bfloat16, device=DEV)
    (gq, gk), (rq, rk) = both(monkeypatch, fused.rope, pos, q, k, cos, sin, cos_sin)
    assert close(gq, rq) and close(gk, rk)


@pytest.mark.parametrize("t", [1, 33])
def test_rope_in_place_on_qkv_views(t: int) -> None:
    """The model's call: q and k as strided views into the qkv projection's output, rotated
    in place (no copies), v untouched, equal to the torch rotation of contiguous copies."""
    d = 128
    inv = 1.0 / (500000.0 ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
    freqs = torch.outer(torch.arange(4096, dtype=torch.float64), inv)
    cos, sin = freqs.cos().float().to(DEV), freqs.sin().float().to(DEV)
    cos_sin = torch.cat([cos, sin], -1)
    pos = torch.randint(0, 4096, (t,), device=DEV)
    qkv = torch.randn(t, (32 + 2 * 8) * d, dtype=torch.bfloat16, device=DEV)
    q = qkv[:, : 32 * d].view(t, 32, d)
    k = qkv[:, 32 * d : 40 * d].view(t, 8, d)
    rq, rk = fused.torch_rope(pos, q.clone(), k.clone(), cos, sin)
    v_before = qkv[:, 40 * d :].clone()
    gq, gk = fused.rope(pos, q, k, cos, sin, cos_sin)
    assert gq.data_ptr() == q.data_ptr() and gk.data_ptr() == k.data_ptr()  # in place
    assert close(gq, rq) and close(gk, rk) and torch.equal(qkv[:, 40 * d :], v_before)


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_model_with_fused_ops_as_accurate_as_torch_ops(monkeypatch: pytest.MonkeyPatch,
                                                       make_tiny_model, arch: str) -> None:
    """A whole model (qwen3: per-head q/k norms too): the runner checked every fused kernel at
    start and uses them, and its bf16 logits are as close to a float32 run (torch ops, torch
    attention) as the same bf16 runner on the torch ops. (Fused and torch bf16 round at
    different places, so they are compared through the float32 reference, not to each other.)"""
    from radixrt.config import EngineConfig
    from radixrt.testing.batches import batch_from_chunks
    from radixrt.worker.model_runner import ModelRunner

    path = make_tiny_model(arch, head_dim=64)

    def runner(dtype: str = "bfloat16", backend: str = "flashinfer") -> ModelRunner:
        return ModelRunner(EngineConfig(model_path=str(path), device="cuda", dtype=dtype,
                                        attention_backend=backend, page_size=16,
                                        max_total_tokens=4096, max_running_requests=4,
                                        disable_cuda_graph=True))

    fused_runner = runner()
    assert fused_runner.fused_ops == {op: "fused" for op in fused.OPS}
    assert fused.active_ops(DEV) == list(fused.OPS)
    monkeypatch.setenv(fused.ENV, "0")
    torch_runner = runner()
    ref_runner = runner("float32", "torch")
    assert fused.active_ops(DEV) == []
    g = torch.Generator().manual_seed(3)
    chunks = [torch.randint(3, 4000, (n,), generator=g).tolist() for n in (40, 3, 17)]
    pages = {s: list(range(s * 8, s * 8 + 8)) for s in range(3)}
    batch = batch_from_chunks([0, 1, 2], [0, 0, 0], chunks, pages)
    logits = []
    for r, mode in ((ref_runner, "0"), (torch_runner, "0"), (fused_runner, "1")):
        monkeypatch.setenv(fused.ENV, mode)
        r._apply_updates(batch)
        logits.append(r.forward(batch).float())
    ref, unfused, got = logits
    err_fused = float((got - ref).norm() / ref.norm())
    err_torch = float((unfused - ref).norm() / ref.norm())
    assert err_fused <= 1.25 * err_torch + 1e-2, (err_fused, err_torch)
