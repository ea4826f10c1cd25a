"""Bad model directories fail with one clear error naming the problem."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from radixrt.model_info import ModelInfo, lm_fields
from radixrt.models.config import ModelConfig, ModelLoadError
from radixrt.models.loader import load_model


def copy_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        ModelConfig.from_dir(tmp_path / "nope")


def test_missing_config(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="no config.json"):
        ModelConfig.from_dir(tmp_path)


def test_unknown_architecture(make_tiny_model, tmp_path: Path) -> None:
    d = copy_model(make_tiny_model("llama"), tmp_path / "m")
    cfg = json.loads((d / "config.json").read_text())
    cfg["architectures"] = ["GPT2LMHeadModel"]
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="unsupported architecture.*GPT2LMHeadModel"):
        load_model(d, torch.float32, "cpu")


def test_missing_field(make_tiny_model, tmp_path: Path) -> None:
    d = copy_model(make_tiny_model("llama"), tmp_path / "m")
    cfg = json.loads((d / "config.json").read_text())
    del cfg["hidden_size"]
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="missing required field 'hidden_size'"):
        ModelConfig.from_dir(d)


def test_missing_tensor(make_tiny_model, tmp_path: Path) -> None:
    d = copy_model(make_tiny_model("llama"), tmp_path / "m")
    f = d / "model.safetensors"
    tensors = load_file(f)
    del tensors["model.layers.1.mlp.down_proj.weight"]
    save_file(tensors, f)
    with pytest.raises(ModelLoadError, match="missing tensor model.layers.1.mlp.down_proj.weight"):
        load_model(d, torch.float32, "cpu")


def test_shape_mismatch(make_tiny_model, tmp_path: Path) -> None:
    d = copy_model(make_tiny_model("llama"), tmp_path / "m")
    f = d / "model.safetensors"
    tensors = load_file(f)
    tensors["model.layers.0.self_attn.k_proj.weight"] = torch.zeros(8, 64)
    save_file(tensors, f)
    with pytest.raises(ModelLoadError, match=r"k_proj.weight .*shape \(8, 64\), expected \(32, 64\)"):
        load_model(d, torch.float32, "cpu")


def test_no_weights(make_tiny_model, tmp_path: Path) -> None:
    d = copy_model(make_tiny_model("llama"), tmp_path / "m")
    (d / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="no \\*.safetensors"):
        load_model(d, torch.float32, "cpu")


# ---------------------------------------------------------------- ModelInfo: one parse for all


def test_model_info_and_model_config_agree(make_tiny_model) -> None:
    d = make_tiny_model("qwen2")
    info = ModelInfo.from_dir(d)
    cfg = ModelConfig.from_dir(d)
    assert (info.context_length, info.vocab_size, info.eos_token_ids) == (2048, 49152, (2,))
    assert ModelConfig.from_info(info) == cfg
    assert ModelInfo.from_dir(d, context_length=512).context_length == 512


def test_text_config_wins_over_the_top_level(tmp_path: Path) -> None:
    """A multimodal-style config: the language model's fields sit under text_config."""
    raw = {"architectures": ["LlamaForCausalLM"], "vocab_size": 7, "eos_token_id": 9,
           "max_position_embeddings": 100, "text_config": {
               "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
               "num_attention_heads": 4, "vocab_size": 1000, "max_position_embeddings": 4000}}
    (tmp_path / "config.json").write_text(json.dumps(raw))
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [3, 4]}))
    info = ModelInfo.from_dir(tmp_path)
    cfg = ModelConfig.from_dir(tmp_path)
    assert (info.vocab_size, info.context_length, info.eos_token_ids) == (1000, 4000, (3, 4))
    assert (cfg.vocab_size, cfg.max_position_embeddings, cfg.eos_token_ids) == (1000, 4000, (3, 4))
    # The top level fills what text_config lacks.
    assert lm_fields(raw)["eos_token_id"] == 9


def test_model_info_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        ModelInfo.from_dir(tmp_path / "nope")
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="not valid JSON"):
        ModelInfo.from_dir(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    with pytest.raises(ModelLoadError, match="missing required field 'vocab_size'"):
        ModelInfo.from_dir(tmp_path)
