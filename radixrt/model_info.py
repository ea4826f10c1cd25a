"""What the serving layers know about a model, read once from its config files.

`ModelInfo.load(config)` runs in the process that starts the server (or Engine) and the result
is passed to every child: the tokenizer (context length, vocabulary), the scheduler (context
length, EOS ids), the frontend (limits, /v1/models) and the worker (the raw config, from which
models/config.py takes the architecture's fields). No other module parses config.json.

Multimodal configs nest the language model's fields under `text_config`: those win, and the
top level fills in what they lack.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from radixrt.config import EngineConfig

DEFAULT_MAX_POSITIONS = 4096  # when config.json gives no max_position_embeddings


class ModelLoadError(RuntimeError):
    """A model directory cannot be served; the message names the problem."""


def read_config_files(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(config.json, generation_config.json or {}) of a Hugging Face model directory."""
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
    try:
        gen = json.loads(gen_file.read_text()) if gen_file.is_file() else {}
    except json.JSONDecodeError as e:
        raise ModelLoadError(f"{gen_file} is not valid JSON: {e}") from None
    return raw, gen


def lm_fields(raw: dict[str, Any]) -> dict[str, Any]:
    """The language model's fields: `text_config` first, then the top level."""
    return {**raw, **(raw.get("text_config") or {})}


def eos_token_ids(lm: dict[str, Any], gen: dict[str, Any]) -> tuple[int, ...]:
    """EOS ids: generation_config.json's, else config.json's (an int or a list)."""
    eos = gen.get("eos_token_id", lm.get("eos_token_id"))
    if eos is None:
        return ()
    if isinstance(eos, list):
        return tuple(int(e) for e in eos)
    return (int(eos),)


# generation_config.json keys that are sampling defaults (vLLM's set), as SamplingParams names.
SAMPLING_DEFAULT_KEYS = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty",
                         "max_new_tokens")


def sampling_defaults(gen: dict[str, Any]) -> dict[str, float | int]:
    """The model's sampling defaults from generation_config.json (numbers only: a request
    value wins over them, and they win over the API's own defaults)."""
    out: dict[str, float | int] = {}
    for key in SAMPLING_DEFAULT_KEYS:
        value = gen.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = int(value) if key in ("top_k", "max_new_tokens") else float(value)
    return out


def max_positions(lm: dict[str, Any]) -> int:
    return int(lm.get("max_position_embeddings", DEFAULT_MAX_POSITIONS))


def resolve_context_length(override: int | None, model_max_positions: int) -> int:
    """The serving context length: --context-length when given, else the model's."""
    return override or model_max_positions


@dataclass(frozen=True)
class ModelInfo:
    """A model as the serving layers see it. Plain data: travels to every child process."""

    context_length: int
    vocab_size: int
    eos_token_ids: tuple[int, ...] = ()
    model_path: str = ""
    config: dict[str, Any] = field(default_factory=dict, compare=False)  # config.json
    generation_config: dict[str, Any] = field(default_factory=dict, compare=False)
    sampling_defaults: dict[str, float | int] = field(default_factory=dict, compare=False)

    @classmethod
    def from_dir(cls, path: str | Path, context_length: int | None = None) -> ModelInfo:
        raw, gen = read_config_files(path)
        lm = lm_fields(raw)
        if "vocab_size" not in lm:
            raise ModelLoadError(f"{Path(path) / 'config.json'}: missing required field "
                                 "'vocab_size'")
        return cls(
            context_length=resolve_context_length(context_length, max_positions(lm)),
            vocab_size=int(lm["vocab_size"]),
            eos_token_ids=eos_token_ids(lm, gen),
            model_path=str(path),
            config=raw,
            generation_config=gen,
            sampling_defaults=sampling_defaults(gen),
        )

    @property
    def hidden_size(self) -> int:
        """The width of the model's hidden states (an embedding's dimensions)."""
        return int(lm_fields(self.config).get("hidden_size", 0))

    @classmethod
    def load(cls, config: EngineConfig) -> ModelInfo:
        """The ModelInfo of config.model_path, with config.context_length applied."""
        return cls.from_dir(config.model_path, config.context_length)
