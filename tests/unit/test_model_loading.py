"""Bad model directories fail with one clear error naming the problem."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

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
