"""Packed quantized checkpoints: a GGUF's own Q4_1 / Q8_0 blocks, loadable in well under a
second.

The default model comes as a GGUF whose linear layers are Q4_1 and whose (tied) token
embedding is Q8_0 (radixrt/default_model.py). Next to its fp32 safetensors, its directory
keeps those blocks, copied bit for bit (split into qs / d / m arrays, q/k rows unpermuted),
in `quantized/int4.safetensors`: the same weights as the fp32 file, a quarter of the bytes,
and no parsing of the GGUF's tokenizer metadata at every start (gguf's reader takes ~5-10 s
for it). Rows move freely in a group-quantized matrix (groups run along the input dim), so
llama.cpp's q/k row permutation is undone on packed rows as on fp32 ones.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from radixrt.models.config import INT4_CHECKPOINT, ModelConfig, ModelLoadError
from radixrt.models.llama import LlamaForCausalLM
from radixrt.models.quant import GROUP, QuantizedEmbedding, QuantizedLinear, QuantWeight

INT4_FILE = INT4_CHECKPOINT
FORMAT = "radixrt-group32-v1"
_BLOCK_BYTES = {"Q4_1": 20, "Q8_0": 34}
_FIELDS = ("qs", "d", "m")


def int4_checkpoint(path: str | Path) -> Path | None:
    """The packed int4 checkpoint of a model directory, if it has one."""
    f = Path(path) / INT4_FILE
    return f if f.is_file() else None


def blocks_to_weight(raw: np.ndarray, kind: str) -> QuantWeight:
    """GGUF Q4_1 / Q8_0 blocks [N, bytes per row] -> a packed QuantWeight (copies)."""
    size = _BLOCK_BYTES[kind]
    n = raw.shape[0]
    blocks = np.ascontiguousarray(raw).reshape(n, -1, size)
    nb = blocks.shape[1]

    def half(a: int, b: int) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(blocks[..., a:b]).view(np.float16).reshape(n, nb))

    if kind == "Q4_1":
        qs = torch.from_numpy(np.ascontiguousarray(blocks[..., 4:]).reshape(n, nb * 16))
        return QuantWeight(4, qs, half(0, 2), half(2, 4))
    qs = np.ascontiguousarray(blocks[..., 2:]).view(np.int8).reshape(n, nb * GROUP)
    return QuantWeight(8, torch.from_numpy(qs), half(0, 2))


def write_from_gguf(reader: Any, rename: Callable[[str], str],
                    unpermute: Callable[[str, np.ndarray], np.ndarray], out_file: Path) -> None:
    """Write every tensor of a GGUF reader into a packed checkpoint under HF names:
    Q4_1 / Q8_0 as `<name>.qs/.d/.m`, F32 as is. `unpermute(gguf_name, rows)` undoes the
    converter's row permutation (identity for tensors it did not permute)."""
    from safetensors.torch import save_file

    out: dict[str, torch.Tensor] = {}
    for t in reader.tensors:
        kind = t.tensor_type.name
        name = rename(t.name)
        data = unpermute(t.name, np.asarray(t.data))
        if kind in _BLOCK_BYTES:
            w = blocks_to_weight(data, kind)
            for field in _FIELDS:
                if getattr(w, field) is not None:
                    out[f"{name}.{field}"] = getattr(w, field)
        elif kind == "F32":
            out[name] = torch.from_numpy(np.array(data, dtype=np.float32))
        else:
            raise ValueError(f"GGUF tensor {t.name} has type {kind}; radixrt packs Q4_1, Q8_0 "
                             "and F32")
    out_file.parent.mkdir(parents=True, exist_ok=True)
    save_file(out, str(out_file), metadata={"format": FORMAT})


def _read(file: Path) -> dict[str, QuantWeight | torch.Tensor]:
    from safetensors import safe_open

    raw: dict[str, torch.Tensor] = {}
    with safe_open(str(file), framework="pt", device="cpu") as f:
        if (f.metadata() or {}).get("format") != FORMAT:
            raise ModelLoadError(f"{file} is not a {FORMAT} checkpoint")
        for key in f.keys():
            raw[key] = f.get_tensor(key)
    out: dict[str, QuantWeight | torch.Tensor] = {}
    for key, t in raw.items():
        base, _, field = key.rpartition(".")
        if field == "qs":
            bits = 4 if t.dtype == torch.uint8 else 8
            out[base] = QuantWeight(bits, t, raw[f"{base}.d"], raw.get(f"{base}.m"))
        elif field not in ("d", "m"):
            out[key] = t
    return out


def load_int4_model(path: str | Path, cfg: ModelConfig, dtype: torch.dtype) -> LlamaForCausalLM:
    """The model of directory `path` from its packed checkpoint (linear layers int4 as
    stored, a Q8_0 embedding as an int8 lookup table shared with a tied lm_head)."""
    file = int4_checkpoint(path)
    if file is None:
        raise ModelLoadError(f"{path} has no {INT4_FILE}")
    tensors = _read(file)
    with torch.device("meta"):
        model = LlamaForCausalLM(cfg, device=torch.device("cpu"))
    fused: dict[str, list[tuple[int, QuantWeight | torch.Tensor]]] = {}
    for hf_name, slot in model.weight_map().items():
        if hf_name not in tensors:
            raise ModelLoadError(f"{file} lacks {hf_name}")
        fused.setdefault(slot.ours, []).append((slot.offset, tensors[hf_name]))
    for ours, parts in fused.items():
        values = [v for _, v in sorted(parts, key=lambda p: p[0])]
        module_name = ours.rpartition(".")[0]
        if all(isinstance(v, QuantWeight) for v in values):
            _set_quantized(model, module_name, QuantWeight.cat(values), dtype)  # type: ignore[arg-type]
        elif len(values) == 1 and isinstance(values[0], torch.Tensor) and ours.endswith(".weight"):
            module = model.get_submodule(module_name)
            if tuple(module.weight.shape) != tuple(values[0].shape):
                raise ModelLoadError(f"{ours}: checkpoint shape {tuple(values[0].shape)}, "
                                     f"config {tuple(module.weight.shape)}")
            module.weight = torch.nn.Parameter(values[0].to(dtype), requires_grad=False)
        else:
            raise ModelLoadError(f"{ours}: cannot combine tensors of different kinds")
    if cfg.tie_word_embeddings:
        emb = model.embed_tokens
        if not isinstance(emb, QuantizedEmbedding):
            raise ModelLoadError("a tied embedding in a packed checkpoint must be int8")
        model.lm_head = QuantizedLinear(QuantWeight(8, emb.qs, emb.d))
    model.rope = type(model.rope)(cfg, torch.device("cpu"))
    left = [n for n, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
    if left:
        raise ModelLoadError(f"{file} left {left[0]} unset")
    return model.eval()


def _set_quantized(model: LlamaForCausalLM, module_name: str, weight: QuantWeight,
                   dtype: torch.dtype) -> None:
    """Replace nn.Linear / nn.Embedding `module_name` by its quantized counterpart."""
    old = model.get_submodule(module_name)
    n, k = weight.shape
    if isinstance(old, torch.nn.Embedding):
        want = (old.num_embeddings, old.embedding_dim)
        new: torch.nn.Module = QuantizedEmbedding(weight, dtype)
    else:
        want = (old.out_features, old.in_features)
        if old.bias is not None:
            raise ModelLoadError(f"{module_name}: packed checkpoints carry no biases")
        new = QuantizedLinear(weight)
    if (n, k) != want:
        raise ModelLoadError(f"{module_name}: checkpoint shape {(n, k)}, config {want}")
    parent, _, child = module_name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)
