"""The one-token Triton GEMV (radixrt/models/gemv_cuda.py) against F.linear, and what
`install` does to a model."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
pytest.importorskip("triton")

from radixrt.models import gemv_cuda  # noqa: E402
from radixrt.testing.compare import rel_err  # noqa: E402

DEV = torch.device("cuda")


PDL = [False, True] if gemv_cuda.pdl_supported(DEV) else [False]


@pytest.mark.parametrize("pdl", PDL)
@pytest.mark.parametrize(("n", "k"), [(6144, 4096), (4096, 14336), (1000, 576), (49152, 576)])
def test_gemv_matches_linear_in_every_config(n: int, k: int, pdl: bool) -> None:
    w = torch.randn(n, k, device=DEV, dtype=torch.bfloat16) / k**0.5
    x = torch.randn(1, k, device=DEV, dtype=torch.bfloat16)
    ref = F.linear(x.float(), w.float())
    for cfg in gemv_cuda.CONFIGS:
        y = gemv_cuda.gemv(x, w, cfg, pdl=pdl)
        assert y.shape == (1, n) and y.dtype == torch.bfloat16
        assert rel_err(y, ref) < 1e-2, cfg


@pytest.mark.skipif(PDL == [False], reason="PDL needs SM90+ and a Triton with gdc_wait")
def test_pdl_gemvs_back_to_back_in_a_graph_read_what_the_kernel_before_wrote() -> None:
    """A chain where each GEMV's input is the previous one's output, launched as
    programmatic dependents and captured in a CUDA graph: each waits for its input (a
    missing wait would read a stale or half-written x)."""
    n = 4096
    ws = [torch.randn(n, n, device=DEV, dtype=torch.bfloat16) / n**0.5 for _ in range(6)]
    x0 = torch.randn(1, n, device=DEV, dtype=torch.bfloat16)

    def chain(pdl: bool) -> torch.Tensor:
        x = x0
        for w in ws:
            x = gemv_cuda.gemv(x, w, (4, 1024, 4), pdl=pdl)
        return x

    want = chain(False)
    chain(True)  # compile outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = chain(True)
    for _ in range(3):
        x0.normal_()
        want = chain(False)
        graph.replay()
        torch.cuda.synchronize()
        assert rel_err(out, want) < 1e-2


@pytest.mark.parametrize(("n", "k"), [(4096, 14336), (576, 1536)])
def test_fused_silu_mul_matches_activation_then_linear(n: int, k: int) -> None:
    from radixrt.models import fused_cuda

    w = torch.randn(n, k, device=DEV, dtype=torch.bfloat16) / k**0.5
    gate_up = torch.randn(1, 2 * k, device=DEV, dtype=torch.bfloat16)
    ref = F.linear(fused_cuda.silu_and_mul(gate_up).float(), w.float())
    for cfg in gemv_cuda.CONFIGS:
        y = gemv_cuda.gemv(gate_up, w, cfg, silu_mul=True)
        assert y.shape == (1, n) and y.dtype == torch.bfloat16
        assert rel_err(y, ref) < 1e-2, cfg


@pytest.mark.parametrize("add", [False, True])
def test_fused_rms_norm_matches_norm_then_linear(add: bool) -> None:
    from radixrt.models import fused_cuda

    n, k = 6144, 4096
    w = torch.randn(n, k, device=DEV, dtype=torch.bfloat16) / k**0.5
    g = 1 + 0.1 * torch.randn(k, device=DEV, dtype=torch.bfloat16)
    x = torch.randn(1, k, device=DEV, dtype=torch.bfloat16)
    r = torch.randn(1, k, device=DEV, dtype=torch.bfloat16) if add else None
    if r is not None:
        h, want_r = fused_cuda.add_rms_norm(x.clone(), r.clone(), g, 1e-5)
    else:
        h, want_r = fused_cuda.rms_norm(x, g, 1e-5), x
    ref = F.linear(h.float(), w.float())
    for cfg in gemv_cuda.CONFIGS:
        y, got_r = gemv_cuda.gemv_rms_norm(x, r, g, 1e-5, w, cfg)
        assert rel_err(y, ref) < 1e-2, cfg
        assert torch.equal(got_r, want_r), cfg  # rounded to nearest even, as torch does


def test_install_swaps_only_what_it_reports_and_keeps_outputs(make_tiny_model) -> None:
    from radixrt.config import EngineConfig
    from radixrt.testing.batches import batch_from_chunks
    from radixrt.worker.model_runner import ModelRunner

    path = make_tiny_model("llama", head_dim=64)
    cfg = EngineConfig(model_path=str(path), device="cuda", dtype="bfloat16",
                       attention_backend="flashinfer", page_size=16, max_total_tokens=4096,
                       max_running_requests=4, disable_cuda_graph=True)
    runner = ModelRunner(cfg)  # installs by measurement
    roles = {"qkv_proj", "o_proj", "gate_up_proj", "down_proj", "lm_head"}
    assert set(runner.gemv) == roles, runner.gemv
    for parent in runner.model.modules():
        for name, child in parent.named_children():
            if name in roles:
                assert isinstance(child, gemv_cuda.GemvLinear) == runner.gemv[name].startswith(
                    "gemv"), (name, runner.gemv[name])
    # Forced everywhere: the state dict is unchanged and a one-token step's logits match.
    forced = ModelRunner(cfg.replace())
    keys = set(forced.model.state_dict())
    status = gemv_cuda.install(forced.model, DEV, graphs=True, min_gain=-1e9)
    assert all(v.startswith("gemv") for v in status.values()), status
    assert set(forced.model.state_dict()) == keys
    layers = len(forced.model.layers)
    assert sum(isinstance(m, gemv_cuda.GemvLinear) for m in forced.model.modules()) == (
        4 * layers + 1)
    prompt = batch_from_chunks([0], [0], [[5, 9, 11, 300]], {0: [0]})
    forced._apply_updates(prompt)
    forced.forward(prompt)
    step = batch_from_chunks([0], [4], [[17]], {})
    # As installed, then with every prologue fused: SiLU-and-mul into the down projections,
    # the residual add and RMSNorm into qkv, gate_up and lm_head.
    for fused in (None, True):
        if fused:
            for layer in forced.model.layers:
                layer.mlp.down_proj.prologue = "silu_mul"
                layer.mlp.gate_up_proj.prologue = "rms_norm"
                layer.self_attn.qkv_proj.prologue = "rms_norm"
            forced.model.lm_head.prologue = "rms_norm"
        logits = []
        for on in (True, False):
            gemv_cuda.enabled = on
            try:
                logits.append(forced.forward(step).float())
            finally:
                gemv_cuda.enabled = True
        assert rel_err(logits[0], logits[1]) < 2e-2, fused
