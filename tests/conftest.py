"""Shared pytest fixtures.

default_model_dir (session) -> pathlib.Path
    The embedded SmolLM2-135M-Instruct HF directory (radixrt.default_model); the first
    use in a fresh cache builds it from the GGUF (~15 s).

make_tiny_model (session) -> factory
    make_tiny_model(arch: str = "llama", save_dtype="float32", **overrides) -> pathlib.Path
    A tiny random-weight HF model directory, arch in {"llama", "qwen2", "qwen3"}:
    hidden 64, intermediate 128, 2 layers, 4 heads, 2 KV heads, head_dim 16,
    2048 positions, vocab 49152, using the default model's tokenizer and ChatML
    template (bos 1, eos 2). llama: untied lm_head; qwen2: tied, q/k/v bias;
    qwen3: tied, q/k RMSNorm. `overrides` are config fields (e.g. num_hidden_layers=3,
    tie_word_embeddings=False, initializer_range=0.3). Weights are fp32 safetensors
    (save_dtype="bfloat16": bf16 ones, as most checkpoints are published),
    deterministic for a given (arch, overrides), with random (not 1/0) norm weights and
    biases so that code which skips them gives different logits. Logits have std ~1.6,
    so greedy outputs differ across prompts; random models are chaotic, though, so
    greedy text only reproduces in fp32: compare bf16 runs by logit tolerance.
    Built once per session per (arch, overrides).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

TINY_BASE: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "max_position_embeddings": 2048,
    "vocab_size": 49152,
    "rms_norm_eps": 1e-6,
    # Large enough that logits differ clearly between tokens and prompts.
    "initializer_range": 0.2,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 2,
}
TINY_ARCHS: dict[str, dict[str, Any]] = {
    "llama": {"tie_word_embeddings": False, "rope_theta": 10000.0},
    "qwen2": {"tie_word_embeddings": True, "rope_theta": 1000000.0},
    "qwen3": {"tie_word_embeddings": True, "rope_theta": 1000000.0},
}


@pytest.fixture(scope="session")
def default_model_dir() -> Path:
    from radixrt.default_model import default_model_dir as build

    return build()


def _config(arch: str, fields: dict[str, Any]) -> Any:
    from transformers import LlamaConfig, Qwen2Config, Qwen3Config

    cls = {"llama": LlamaConfig, "qwen2": Qwen2Config, "qwen3": Qwen3Config}[arch]
    fields = dict(fields)
    theta = fields.pop("rope_theta")
    # transformers 5 reads rope_parameters; 4.x reads rope_theta.
    fields.setdefault("rope_parameters", {"rope_type": "default", "rope_theta": theta})
    config = cls(**fields)
    if not hasattr(config, "rope_parameters"):
        config.rope_theta = theta
    return config


def _randomize(model: Any, std: float) -> None:
    """Every parameter random: matrices N(0, std), norms 1 + N(0, 0.1), biases N(0, 0.1)."""
    import torch

    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.normal_(0.0, 0.1)
            elif p.dim() == 1:  # RMSNorm weights
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            else:
                p.normal_(0.0, std)


def build_tiny_model(out_dir: Path, tokenizer_dir: Path, arch: str = "llama",
                     save_dtype: str = "float32", **overrides: Any) -> Path:
    import torch
    from transformers import AutoModelForCausalLM

    if arch not in TINY_ARCHS:
        raise ValueError(f"unknown tiny arch {arch!r}; choose from {sorted(TINY_ARCHS)}")
    fields = {**TINY_BASE, **TINY_ARCHS[arch], **overrides}
    config = _config(arch, fields)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        _randomize(model, float(fields["initializer_range"]))
    model.eval()
    # save_dtype "bfloat16": a checkpoint as most are published (every tensor rounded to bf16).
    model.to(getattr(torch, save_dtype)).save_pretrained(str(out_dir), safe_serialization=True)
    # The tokenizer (and its chat template) of the default model fits vocab 49152.
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
                 "special_tokens_map.json"):
        if (tokenizer_dir / name).is_file():
            shutil.copy2(tokenizer_dir / name, out_dir / name)
    gen = {"bos_token_id": fields["bos_token_id"], "eos_token_id": fields["eos_token_id"],
           "pad_token_id": fields["pad_token_id"]}
    (out_dir / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
    return out_dir


@pytest.fixture(scope="session")
def make_tiny_model(tmp_path_factory: pytest.TempPathFactory,
                    default_model_dir: Path) -> Callable[..., Path]:
    built: dict[str, Path] = {}

    def make(arch: str = "llama", **overrides: Any) -> Path:
        key = json.dumps([arch, overrides], sort_keys=True, default=repr)
        if key not in built:
            digest = hashlib.sha1(key.encode()).hexdigest()[:10]
            out = tmp_path_factory.mktemp(f"tiny-{arch}-{digest}", numbered=True)
            built[key] = build_tiny_model(out, default_model_dir, arch, **overrides)
        return built[key]

    return make
