"""Tensor parallelism on CPU with gloo: N real rank processes against the one-process model.

Each rank runs radixrt.testing.tp_run (a ModelRunner on its shard: its heads, its KV heads,
its vocabulary slice); rank 0's greedy tokens and full logits must match tp 1's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from radixrt.config import build_engine_config
from radixrt.models.config import ModelConfig, ModelLoadError, shard_config, tp_layout_error
from radixrt.testing.tp_run import launch_ranks, reference_run


def check_parity(model: Path, tp: int, tmp_path: Path, backend: str = "torch") -> dict:
    got = launch_ranks(model, tp, tmp_path / f"tp{tp}.npz", backend)
    tokens, logits, params = reference_run(model, backend)
    assert got["logits"].shape == logits.shape
    # fp32: only the order of the all-reduce sums differs.
    scale = float(np.abs(logits).max())
    np.testing.assert_allclose(got["logits"], logits, rtol=0, atol=2e-5 * scale)
    np.testing.assert_array_equal(got["tokens"], tokens)
    assert len(set(tokens[0].tolist())) > 1  # a real continuation, not one token repeated
    # Each rank holds about 1/tp of the weights (norms are whole on every rank).
    assert got["params"] < params / tp * 1.05
    return got


@pytest.mark.timeout(600)
@pytest.mark.parametrize("arch, saved", [("llama", "float32"), ("qwen3", "bfloat16")])
def test_tp2_tiny_models_match_tp1(make_tiny_model, tmp_path: Path, arch: str,
                                   saved: str) -> None:
    """4 query heads, 2 KV heads (GQA): each rank keeps 2 query heads and 1 KV head. The
    bf16 checkpoint keeps its matrices bf16 on each rank (float32 math)."""
    got = check_parity(make_tiny_model(arch, save_dtype=saved), 2, tmp_path)
    assert int(got["kv_heads"]) == 1
    assert str(got["matrix_dtype"]) == f"torch.{saved}"


@pytest.mark.timeout(600)
def test_tp2_replicated_kv_head_cpu_backend(make_tiny_model, tmp_path: Path) -> None:
    """One KV head for two ranks: both keep a copy; radixrt's CPU attention kernels per rank;
    qwen2's q/k/v biases split with their rows."""
    model = make_tiny_model("qwen2", num_key_value_heads=1)
    got = check_parity(model, 2, tmp_path, backend="cpu")
    assert int(got["kv_heads"]) == 1


@pytest.mark.timeout(900)
def test_tp3_default_model_matches_tp1(default_model_dir: Path, tmp_path: Path) -> None:
    """SmolLM2-135M: 9 query heads and 3 KV heads over 3 ranks, vocab 49152 = 3 x 16384."""
    got = check_parity(default_model_dir, 3, tmp_path)
    assert int(got["kv_heads"]) == 1


def test_layout_errors(make_tiny_model) -> None:
    cfg = ModelConfig.from_dir(make_tiny_model("llama"))  # 4 heads, 2 KV heads, MLP 128
    assert tp_layout_error(cfg, 1) is None and tp_layout_error(cfg, 2) is None
    assert tp_layout_error(cfg, 4) is None  # 2 KV heads, each replicated on 2 ranks
    assert "query heads (4) is not a multiple of 3" in (tp_layout_error(cfg, 3) or "")
    assert "at least 1" in (tp_layout_error(cfg, 0) or "")
    odd = cfg.__class__(**{**cfg.__dict__, "num_heads": 12, "num_kv_heads": 3})
    assert "3 KV heads cannot be replicated evenly over 4" in (tp_layout_error(odd, 4) or "")
    kv = cfg.__class__(**{**cfg.__dict__, "num_heads": 8, "num_kv_heads": 6})
    assert "KV heads (6) are not a multiple of 4" in (tp_layout_error(kv, 4) or "")
    vocab = cfg.__class__(**{**cfg.__dict__, "vocab_size": 49153})
    assert "vocabulary size (49153)" in (tp_layout_error(vocab, 2) or "")
    with pytest.raises(ModelLoadError, match="not a multiple of 3"):
        shard_config(cfg, 3)
    local = shard_config(cfg, 4)
    assert (local.num_heads, local.num_kv_heads, local.intermediate_size) == (1, 1, 32)


def test_tp_quantization_resolution(make_tiny_model, default_model_dir: Path) -> None:
    """Quantized weights are not sharded: auto is none under tp, int4/int8 are refused."""
    cfg = build_engine_config(str(default_model_dir), device="cpu", dtype="float32", tp_size=3)
    assert cfg.quantization == "none"
    with pytest.raises(ValueError, match="--quantization int4 does not run with --tp-size 2"):
        build_engine_config(str(make_tiny_model("llama")), device="cpu", dtype="float32",
                            tp_size=2, quantization="int4")
    with pytest.raises(ValueError, match="rank r on cuda:r; pass --device cuda"):
        build_engine_config(str(make_tiny_model("llama")), device="cuda:1", tp_size=2)
    with pytest.raises(ValueError, match="tp_size must be a positive integer"):
        build_engine_config(str(make_tiny_model("llama")), device="cpu", tp_size=0)


def test_launch_server_refuses_quantized_tp_with_a_usage_error(capsys) -> None:
    from radixrt.launch_server import main

    with pytest.raises(SystemExit) as exc:
        main(["--tp-size", "2", "--quantization", "int4", "--dtype", "float32",
              "--device", "cpu"])
    assert exc.value.code == 2
    assert "--quantization int4 does not run with --tp-size 2" in capsys.readouterr().err
