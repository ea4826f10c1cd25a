"""A bfloat16 (or float16) copy of a Hugging Face model directory: every floating tensor of its
safetensors rounded, the other files copied. Most checkpoints are published in bf16 (the
default model's own upstream release too), some in fp16; radixrt's directory of the default
model is float32 (widened from the GGUF). For benchmarks of the 16-bit-checkpoint paths.

    python -m bench.model_16bit OUT_DIR [--model DIR] [--dtype float16]   # default model
    python -m bench.model_16bit OUT_DIR --random-llama-1b   # Llama-3.2-1B's shape, random

--random-llama-1b writes a random-weight model of Llama 3.2 1B's shape (1.24 B parameters,
hidden 2048, 16 layers, GQA 32/8, vocab 128256, tied) with transformers, 2.5 GB, ~1 min.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def copy_16bit(src: Path, out: Path, dtype: torch.dtype = torch.bfloat16) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    for f in sorted(src.iterdir()):
        if f.is_file() and f.suffix == ".safetensors":
            tensors = {k: v.to(dtype) if v.is_floating_point() else v
                       for k, v in load_file(str(f)).items()}
            save_file(tensors, str(out / f.name), metadata={"format": "pt"})
            print(f"{f.name}: {len(tensors)} tensors -> {dtype}", flush=True)
        elif f.is_file() and not f.name.startswith("."):
            shutil.copy2(f, out / f.name)
    cfg = json.loads((out / "config.json").read_text())
    cfg["torch_dtype"] = cfg["dtype"] = str(dtype).removeprefix("torch.")
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    return out


def random_llama_1b(out: Path) -> Path:
    from transformers import AutoModelForCausalLM, LlamaConfig

    cfg = LlamaConfig(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                      num_attention_heads=32, num_key_value_heads=8, head_dim=64,
                      vocab_size=128256, max_position_embeddings=8192, rope_theta=500000.0,
                      tie_word_embeddings=True, rms_norm_eps=1e-5, bos_token_id=1,
                      eos_token_id=2)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.fill_(1.0)  # norms
            else:
                p.normal_(0.0, 0.02)
    model.save_pretrained(str(out), safe_serialization=True)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.model_16bit", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--model", type=Path, default=None, help="source dir (default: radixrt's)")
    ap.add_argument("--dtype", choices=("bfloat16", "float16"), default="bfloat16")
    ap.add_argument("--random-llama-1b", action="store_true",
                    help="a random-weight model of Llama 3.2 1B's shape instead")
    args = ap.parse_args(argv)
    if args.random_llama_1b:
        print(random_llama_1b(args.out))
        return 0
    if args.model is None:
        from radixrt.default_model import default_model_dir

        args.model = default_model_dir()
    print(copy_16bit(args.model, args.out, getattr(torch, args.dtype)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
