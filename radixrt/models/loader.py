"""Build a model from an HF directory: config.json + safetensors, read through mmap."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from radixrt.models.config import ModelConfig, ModelLoadError
from radixrt.models.llama import LlamaForCausalLM, WeightSlot
from radixrt.models.parallel import TensorParallel

logger = logging.getLogger("radixrt")

# Qwen2/Qwen3/Mistral are the Llama decoder with flags set from their config.
MODEL_CLASSES: dict[str, type[LlamaForCausalLM]] = {
    "LlamaForCausalLM": LlamaForCausalLM,
    "MistralForCausalLM": LlamaForCausalLM,
    "Qwen2ForCausalLM": LlamaForCausalLM,
    "Qwen3ForCausalLM": LlamaForCausalLM,
}


def safetensors_files(path: Path) -> list[Path]:
    index = path / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        files = [path / n for n in names]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise ModelLoadError(f"{index} names missing file(s): {', '.join(missing)}")
        return files
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise ModelLoadError(f"{path} has no *.safetensors weights")
    return files


def load_model(path: str | Path, dtype: torch.dtype, device: str | torch.device,
               cfg: ModelConfig | None = None, quantization: str = "none",
               tp: TensorParallel | None = None, matrix_dtype: torch.dtype | None = None
               ) -> LlamaForCausalLM:
    """quantization: none, int8 or int4 (resolved names, see radixrt.config). int4 of a
    directory with a packed checkpoint (the default model: its GGUF's own blocks) loads
    that; otherwise the safetensors weights are quantized round-to-nearest.
    tp: this rank of a tensor-parallel group; it reads only its slices of the tensors.
    matrix_dtype: how the linear and embedding matrices are stored, where not dtype (a 16-bit
    checkpoint computed in float32 on the CPU: dense_cpu.narrow_storage); the linears then
    need radixrt's dense kernel or its widening torch route (dense_cpu.install)."""
    path = Path(path)
    cfg = cfg or ModelConfig.from_dir(path)
    device = torch.device(device)
    tp = tp or TensorParallel()
    t0 = time.perf_counter()
    if quantization not in ("none", "int8", "int4"):
        raise ModelLoadError(f"unknown quantization {quantization!r}")
    if quantization != "none" and tp.size > 1:
        raise ModelLoadError(f"--quantization {quantization} is not supported with "
                             f"--tp-size {tp.size}; use --quantization none")
    if quantization != "none" and device.type != "cpu":
        raise ModelLoadError(f"--quantization {quantization} runs on CPU only, not {device}")
    if quantization == "int4":
        from radixrt.models.quant_checkpoint import int4_checkpoint, load_int4_model

        if int4_checkpoint(path) is not None:
            model = load_int4_model(path, cfg, dtype)
            _log_loaded(model, path, dtype, device, "int4 (packed GGUF blocks)", t0)
            return model
    files = safetensors_files(path)
    with torch.device("meta"):
        model = MODEL_CLASSES[cfg.architecture](cfg, device=torch.device("cpu"), tp=tp)
    model = model.to_empty(device=device).to(dtype)
    # Buffers (rope tables) were lost by to_empty on meta: rebuild them for real.
    model.rope = type(model.rope)(cfg, device)
    if matrix_dtype is not None and matrix_dtype is not dtype:
        _store_matrices(model, matrix_dtype, dtype)
    if cfg.tie_word_embeddings:
        model.lm_head.weight = model.embed_tokens.weight
    _load_weights(model, files, cfg)
    model.eval()
    if quantization != "none":
        from radixrt.models.quant import BITS, quantize_model

        quantize_model(model, BITS[quantization])
    _log_loaded(model, path, dtype, device, quantization, t0)
    return model


def _store_matrices(model: LlamaForCausalLM, matrix_dtype: torch.dtype,
                    dtype: torch.dtype) -> None:
    """Give every nn.Linear weight and the embedding table matrix_dtype storage (before the
    checkpoint is copied in: never a float32 copy of the whole model)."""
    mats = [m.weight for m in model.modules() if type(m) is nn.Linear]
    mats.append(model.embed_tokens.weight)
    for p in mats:
        p.data = torch.empty(p.shape, dtype=matrix_dtype, device=p.device)
    model.embed_tokens.out_dtype = dtype


def _log_loaded(model: nn.Module, path: Path, dtype: torch.dtype, device: torch.device,
                quantization: str, t0: float) -> None:
    tensors = {id(t): t for t in (*model.parameters(), *model.buffers()) if t is not None}
    mib = sum(t.numel() * t.element_size() for t in tensors.values()) / 2**20
    name = str(dtype).removeprefix("torch.")
    if getattr(model.embed_tokens, "out_dtype", None) is not None:  # _store_matrices
        stored = model.embed_tokens.weight.dtype
        name += f", matrices kept {str(stored).removeprefix('torch.')}"
    logger.info("loaded %s (%.0f MiB of weights, %s, quantization %s, %s) in %.1f s",
                path.name, mib, name, quantization, device, time.perf_counter() - t0)


def _load_weights(model: LlamaForCausalLM, files: list[Path], cfg: ModelConfig) -> None:
    params = dict(model.named_parameters(remove_duplicate=False))
    wmap = model.weight_map()
    loaded: set[str] = set()
    for f in files:
        with safe_open(str(f), framework="pt", device="cpu") as sf:
            for name in sf.keys():
                if name not in wmap:
                    # Extras (a tied lm_head copy, rotary inv_freq) are ignored; missing
                    # tensors are not.
                    continue
                slot = wmap[name]
                param = params[slot.ours]
                target = (param.data if slot.rows == -1
                          else param.data.narrow(0, slot.offset, slot.rows))
                tensor = _read_slice(sf, name, slot, target.shape)
                if tuple(tensor.shape) != tuple(target.shape):
                    raise ModelLoadError(
                        f"tensor {name} in {f.name} has shape {tuple(tensor.shape)}, "
                        f"expected {tuple(target.shape)} from config.json"
                    )
                with torch.no_grad():
                    target.copy_(tensor)
                loaded.add(name)
    missing = sorted(set(wmap) - loaded)
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ModelLoadError(f"checkpoint is missing tensor {missing[0]}{more}")


def _read_slice(sf: object, name: str, slot: WeightSlot, shape: torch.Size) -> torch.Tensor:
    """The tensor, or only this rank's slice of it (read straight from the mmap)."""
    if slot.shard_dim is None:
        return sf.get_tensor(name)  # type: ignore[attr-defined]
    part = sf.get_slice(name)  # type: ignore[attr-defined]
    dims = part.get_shape()
    if len(dims) <= slot.shard_dim:
        raise ModelLoadError(f"tensor {name} has shape {tuple(dims)}, expected a dim "
                             f"{slot.shard_dim} to split")
    a, b = slot.shard_start, slot.shard_start + shape[slot.shard_dim]
    if b > dims[slot.shard_dim]:
        raise ModelLoadError(f"tensor {name} has shape {tuple(dims)}, too small for this "
                             f"rank's slice {a}:{b} of dim {slot.shard_dim}")
    return part[a:b] if slot.shard_dim == 0 else part[:, a:b]


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
