"""ModelConfig: the fields of a Hugging Face config.json that our model code needs."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from radixrt.model_info import (
    ModelLoadError,
    eos_token_ids,
    lm_fields,
    max_positions,
    read_config_files,
)

if TYPE_CHECKING:
    from radixrt.model_info import ModelInfo

__all__ = ["SUPPORTED_ARCHITECTURES", "ModelConfig", "ModelLoadError"]

# A model directory's packed int4 weights (radixrt/models/quant_checkpoint.py); named here,
# free of torch, so that the frontend can see whether a model has them.
INT4_CHECKPOINT = "quantized/int4.safetensors"

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM",
                           "Qwen3ForCausalLM")


@dataclass(frozen=True)
class ModelConfig:
    """The architecture fields our model code needs, from a model's config.json (through
    ModelInfo, or read from a directory)."""

    architecture: str
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    max_position_embeddings: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: dict | None
    tie_word_embeddings: bool
    attention_bias: bool  # q/k/v projections carry a bias (Qwen2)
    qk_norm: bool  # per-head RMSNorm on q and k (Qwen3)
    eos_token_ids: tuple[int, ...]
    bos_token_id: int | None
    torch_dtype: str | None

    @classmethod
    def from_dir(cls, path: str | Path) -> ModelConfig:
        raw, gen = read_config_files(path)
        return cls.from_dict(raw, gen, source=str(Path(path) / "config.json"))

    @classmethod
    def from_info(cls, info: ModelInfo) -> ModelConfig:
        """From the config files ModelInfo already read (no second parse)."""
        return cls.from_dict(info.config, info.generation_config,
                             source=str(Path(info.model_path) / "config.json"))

    @classmethod
    def from_dict(cls, raw: dict, gen: dict | None = None, source: str = "config") -> ModelConfig:
        archs = raw.get("architectures") or []
        arch = next((a for a in archs if a in SUPPORTED_ARCHITECTURES), None)
        if arch is None:
            raise ModelLoadError(
                f"{source}: unsupported architecture {archs or raw.get('model_type')!r}; "
                f"radixrt serves {', '.join(SUPPORTED_ARCHITECTURES)}"
            )
        text = lm_fields(raw)

        def need(key: str) -> object:
            if key not in text:
                raise ModelLoadError(f"{source}: missing required field {key!r}")
            return text[key]

        num_heads = int(need("num_attention_heads"))  # type: ignore[arg-type]
        hidden = int(need("hidden_size"))  # type: ignore[arg-type]
        rope_params = text.get("rope_parameters") or {}
        rope_theta = text.get("rope_theta", rope_params.get("rope_theta", 10000.0))
        rope_scaling = text.get("rope_scaling")
        if rope_scaling is None and rope_params.get("rope_type", "default") != "default":
            rope_scaling = rope_params
        return cls(
            architecture=arch,
            hidden_size=hidden,
            intermediate_size=int(need("intermediate_size")),  # type: ignore[arg-type]
            num_layers=int(need("num_hidden_layers")),  # type: ignore[arg-type]
            num_heads=num_heads,
            num_kv_heads=int(text.get("num_key_value_heads") or num_heads),
            head_dim=int(text.get("head_dim") or hidden // num_heads),
            vocab_size=int(need("vocab_size")),  # type: ignore[arg-type]
            max_position_embeddings=max_positions(text),
            rms_norm_eps=float(text.get("rms_norm_eps", 1e-6)),
            rope_theta=float(rope_theta),
            rope_scaling=rope_scaling,
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", text.get("tie_word_embeddings", False))),
            attention_bias=bool(text.get("attention_bias", arch == "Qwen2ForCausalLM")),
            qk_norm=arch == "Qwen3ForCausalLM",
            eos_token_ids=eos_token_ids(text, gen or {}),
            bos_token_id=text.get("bos_token_id"),
            torch_dtype=text.get("torch_dtype") or text.get("dtype"),
        )


# --------------------------------------------------------------------------- tensor parallel
# Torch-free, so that the starting process can refuse a bad --tp-size before any worker loads.


def tp_layout_error(cfg: ModelConfig, tp_size: int) -> str | None:
    """Why `cfg` cannot be split over tp_size ranks, or None. Query heads, the MLP and the
    vocabulary split evenly; KV heads split evenly when there are at least tp_size of them,
    else each is replicated on tp_size / num_kv_heads ranks (which must be whole)."""
    if tp_size < 1:
        return f"--tp-size must be at least 1, not {tp_size}"
    if tp_size == 1:
        return None
    n, kv = tp_size, cfg.num_kv_heads
    for what, count in (("query heads", cfg.num_heads), ("vocabulary size", cfg.vocab_size),
                        ("intermediate size", cfg.intermediate_size)):
        if count % n:
            return f"--tp-size {n}: the model's {what} ({count}) is not a multiple of {n}"
    if kv >= n and kv % n:
        return f"--tp-size {n}: the model's KV heads ({kv}) are not a multiple of {n}"
    if kv < n and n % kv:
        return (f"--tp-size {n}: the model's {kv} KV heads cannot be replicated evenly over "
                f"{n} ranks ({n} is not a multiple of {kv})")
    return None


def shard_config(cfg: ModelConfig, tp_size: int) -> ModelConfig:
    """The config one rank of tp_size sees: its query heads, KV heads (at least one: a
    replicated head) and MLP width. vocab_size stays whole (the sampler sees full logits)."""
    if (err := tp_layout_error(cfg, tp_size)) is not None:
        raise ModelLoadError(err)
    if tp_size == 1:
        return cfg
    return replace(cfg, num_heads=cfg.num_heads // tp_size,
                   num_kv_heads=max(1, cfg.num_kv_heads // tp_size),
                   intermediate_size=cfg.intermediate_size // tp_size)


def kv_head_start(cfg: ModelConfig, tp_size: int, rank: int) -> int:
    """The first (global) KV head rank `rank` keeps: a block of them when they split, else
    the one head its query heads attend to (ranks rank*kv//n share it)."""
    if cfg.num_kv_heads >= tp_size:
        return rank * (cfg.num_kv_heads // tp_size)
    return rank * cfg.num_kv_heads // tp_size
