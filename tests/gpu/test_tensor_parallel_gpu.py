"""Tensor parallelism on CUDA with NCCL (one GPU per rank); skipped on a one-GPU machine."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from radixrt.testing.tp_run import launch_ranks, reference_run

GPUS = torch.cuda.device_count() if torch.cuda.is_available() else 0
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(GPUS < 2, reason=f"needs 2 GPUs for tp 2 ({GPUS} here)")]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_tp2_nccl_matches_tp1(make_tiny_model, tmp_path: Path, arch: str) -> None:
    """float32 with the torch attention backend on cuda:0 and cuda:1 against one GPU."""
    model = make_tiny_model(arch)
    got = launch_ranks(model, 2, tmp_path / "tp2.npz", "torch", "cuda")
    tokens, logits, params = reference_run(model, "torch", "cuda")
    scale = float(np.abs(logits).max())
    np.testing.assert_allclose(got["logits"], logits, rtol=0, atol=1e-4 * scale)
    np.testing.assert_array_equal(got["tokens"], tokens)
    assert int(got["kv_heads"]) == 1 and got["params"] < params / 2 * 1.05


@pytest.mark.timeout(400)
def test_engine_tp2_on_cuda(make_tiny_model) -> None:
    """The Engine over two GPUs: float32 (torch attention) equals tp 1 token for token; the
    CUDA default (bfloat16, FlashInfer, each rank with its local heads) runs end to end."""
    from radixrt import Engine

    model = str(make_tiny_model("llama"))
    params = {"temperature": 0, "max_new_tokens": 16, "ignore_eos": True}
    prompt = [1, 504, 3575, 282, 4649]
    outs = {}
    for tp in (1, 2):
        with Engine(model, tp_size=tp, device="cuda", dtype="float32",
                    max_total_tokens=4096) as engine:
            outs[tp] = engine.generate(input_ids=prompt, sampling_params=params)["output_ids"]
    assert outs[1] == outs[2] and len(outs[2]) == 16
    with Engine(model, tp_size=2, device="cuda", max_total_tokens=4096) as engine:
        assert engine.config.attention_backend == "flashinfer"
        assert len(engine.generate(input_ids=prompt, sampling_params=params)["output_ids"]) == 16
