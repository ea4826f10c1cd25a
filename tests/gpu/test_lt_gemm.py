"""Tuned cuBLASLt algorithms (radixrt/models/gemm_cuda.py) against F.linear, and what `install`
does to a model runner with decode graphs."""

from __future__ import annotations

import os

import pytest
import torch
from torch.nn import functional as F

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
pytest.importorskip("flashinfer")

from radixrt.models import gemm_cuda  # noqa: E402
from radixrt.testing.compare import rel_err  # noqa: E402

DEV = torch.device("cuda")


@pytest.fixture(scope="module")
def library() -> gemm_cuda.CublasLt:
    return gemm_cuda.CublasLt(DEV)


@pytest.mark.parametrize(("m", "n", "k"), [(2, 6144, 4096), (128, 4096, 4096),
                                           (24, 4096, 14336), (128, 49152, 576)])
def test_every_listed_algorithm_matches_linear(library: gemm_cuda.CublasLt, m: int, n: int,
                                               k: int) -> None:
    w = torch.randn(n, k, device=DEV, dtype=torch.bfloat16) / k**0.5
    x = torch.randn(m, k, device=DEV, dtype=torch.bfloat16)
    ref = F.linear(x, w)
    count = library.algorithms(x, w)
    assert count > 0
    ran = 0
    for algo in range(min(count, gemm_cuda.MAX_ALGOS)):
        try:
            y = library.run(x, w, algo)
        except RuntimeError:
            continue
        ran += 1
        assert y.shape == (m, n) and y.dtype == torch.bfloat16
        assert rel_err(y, ref) < 1e-2, algo
    assert ran > 0
    with pytest.raises(ValueError, match="algorithm"):
        library.run(x, w, count)


def test_install_forced_keeps_graph_logits(make_tiny_model) -> None:
    """Every projection forced onto a tuned algorithm at every captured size: decode logits
    replayed from the graphs match cuBLAS's (graphs recaptured with it switched off)."""
    from radixrt.config import EngineConfig
    from radixrt.testing.batches import batch_from_chunks
    from radixrt.worker.graph_runner import create_graph_runner, graph_batch_sizes
    from radixrt.worker.model_runner import ModelRunner

    path = make_tiny_model("llama", head_dim=64)
    cfg = EngineConfig(model_path=str(path), device="cuda", dtype="bfloat16",
                       attention_backend="flashinfer", page_size=16, max_total_tokens=4096,
                       max_running_requests=8, cuda_graph_max_bs=8)
    was = os.environ.get(gemm_cuda.ENV)
    os.environ[gemm_cuda.ENV] = "0"  # measured install off: forced below
    try:
        runner = ModelRunner(cfg)
    finally:
        if was is None:
            del os.environ[gemm_cuda.ENV]
        else:
            os.environ[gemm_cuda.ENV] = was
    assert runner.lt_gemm == {}
    keys = set(runner.model.state_dict())
    sizes = graph_batch_sizes(cfg)
    status = gemm_cuda.install(runner.model, DEV, sizes, min_gain=-1e9)
    roles = {"qkv_proj", "o_proj", "gate_up_proj", "down_proj", "lm_head"}
    assert roles <= set(status), status
    for role in roles:
        assert "F.linear" not in status[role], status[role]
    assert set(runner.model.state_dict()) == keys
    slots = [0, 1, 2]
    prompt = batch_from_chunks(slots, [0] * 3, [[5, 9, 11], [7, 8], [300]],
                               {s: list(range(8 * s, 8 * s + 8)) for s in slots})
    runner._apply_updates(prompt)
    runner.forward(prompt)
    step = batch_from_chunks(slots, [3, 2, 1], [[17], [18], [19]])
    logits = {}
    for on in (True, False):
        gemm_cuda.enabled = on
        try:
            runner.graphs = create_graph_runner(runner)  # captured with the switch as set
            assert runner.graphs is not None
            logits[on] = runner.forward(step).float()
        finally:
            gemm_cuda.enabled = True
    assert rel_err(logits[True], logits[False]) < 2e-2
