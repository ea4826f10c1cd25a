"""ModelConfig: the fields of a Hugging Face config.json that our model code needs."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


class ModelLoadError(RuntimeError):
    """A model directory cannot be served; the message names the problem."""


# A model directory's packed int4 weights (radixrt/models/quant_checkpoint.py); named here,
# free of torch, so that the frontend can see whether a model has them.
INT4_CHECKPOINT = "quantized/int4.safetensors"

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM",
                           "Qwen3ForCausalLM")


@dataclass(frozen=True)
class ModelConfig:
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
        path = Path(path)
        if not path.is_dir():
            raise ModelLoadError(f"model directory {path} does not exist")
        cfg_file = path / "config.json"
        if not cfg_file.is_file():
            raise ModelLoadError(f"{path} has no config.json: not a Hugging Face model directory")
        try:
            raw = json.loads(cfg_file.read_text())
        except json.JSONDecodeError as e:
            raise ModelLoadError(f"{cfg_file} is not valid JSON: {e}") from None
        gen_file = path / "generation_config.json"
        gen = json.loads(gen_file.read_text()) if gen_file.is_file() else {}
        return cls.from_dict(raw, gen, source=str(cfg_file))

    @classmethod
    def from_dict(cls, raw: dict, gen: dict | None = None, source: str = "config") -> ModelConfig:
        archs = raw.get("architectures") or []
        arch = next((a for a in archs if a in SUPPORTED_ARCHITECTURES), None)
        if arch is None:
            raise ModelLoadError(
                f"{source}: unsupported architecture {archs or raw.get('model_type')!r}; "
                f"radixrt serves {', '.join(SUPPORTED_ARCHITECTURES)}"
            )
        text = raw.get("text_config") or raw

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
        eos = (gen or {}).get("eos_token_id", text.get("eos_token_id"))
        eos_ids = tuple(eos) if isinstance(eos, list) else (() if eos is None else (int(eos),))
        return cls(
            architecture=arch,
            hidden_size=hidden,
            intermediate_size=int(need("intermediate_size")),  # type: ignore[arg-type]
            num_layers=int(need("num_hidden_layers")),  # type: ignore[arg-type]
            num_heads=num_heads,
            num_kv_heads=int(text.get("num_key_value_heads") or num_heads),
            head_dim=int(text.get("head_dim") or hidden // num_heads),
            vocab_size=int(need("vocab_size")),  # type: ignore[arg-type]
            max_position_embeddings=int(text.get("max_position_embeddings", 4096)),
            rms_norm_eps=float(text.get("rms_norm_eps", 1e-6)),
            rope_theta=float(rope_theta),
            rope_scaling=rope_scaling,
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", text.get("tie_word_embeddings", False))),
            attention_bias=bool(text.get("attention_bias", arch == "Qwen2ForCausalLM")),
            qk_norm=arch == "Qwen3ForCausalLM",
            eos_token_ids=eos_ids,
            bos_token_id=text.get("bos_token_id"),
            torch_dtype=text.get("torch_dtype") or text.get("dtype"),
        )
