"""Prompt side of the tokenizer process: load the tokenizer, apply the chat template, tokenize
and validate a request before it reaches the scheduler."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from radixrt.config import EngineConfig
from radixrt.ipc.messages import GenerateReq, TokenizeReq
from radixrt.sampling_params import InvalidRequestError

CHAT_ROLES = ("system", "user", "assistant", "tool", "developer")


@dataclass(frozen=True)
class ModelInfo:
    """What the serving layers need to know about a model, read from its config files."""

    context_length: int
    vocab_size: int
    eos_token_ids: tuple[int, ...]


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _as_ids(value: Any) -> tuple[int, ...]:
    if value is None:
        return ()
    if isinstance(value, int):
        return (value,)
    return tuple(int(v) for v in value)


def load_model_info(
    config: EngineConfig, tokenizer: PreTrainedTokenizerBase | None = None
) -> ModelInfo:
    """Context length, vocabulary size and EOS ids from config.json / generation_config.json.

    EngineConfig.context_length, when set, overrides the model's max_position_embeddings.
    The tokenizer is only a fallback for model dirs without those fields.
    """
    path = Path(config.model_path)
    cfg = _read_json(path / "config.json")
    cfg = {**cfg.get("text_config", {}), **cfg}  # multimodal configs nest the LM's fields
    gen = _read_json(path / "generation_config.json")
    context = config.context_length or cfg.get("max_position_embeddings")
    if context is None and tokenizer is not None:
        context = tokenizer.model_max_length
    vocab = cfg.get("vocab_size") or (len(tokenizer) if tokenizer is not None else None)
    if not context or not vocab:
        raise ValueError(f"{path}: config.json lacks max_position_embeddings / vocab_size")
    eos = _as_ids(gen.get("eos_token_id")) or _as_ids(cfg.get("eos_token_id"))
    if not eos and tokenizer is not None and tokenizer.eos_token_id is not None:
        eos = (int(tokenizer.eos_token_id),)
    return ModelInfo(context_length=int(context), vocab_size=int(vocab), eos_token_ids=eos)


def load_tokenizer(model_path: str) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(model_path)


def normalize_messages(messages: list[dict]) -> list[dict]:
    """Chat messages with text-part lists flattened to strings.

    Many chat templates (SmolLM2's among them) concatenate `content` as a string, so lists of
    {"type": "text"} parts are joined here (with newlines, as vLLM does).
    """
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in CHAT_ROLES:
            raise InvalidRequestError(f"messages[{i}] needs a role in {CHAT_ROLES}", "messages")
        content = m.get("content")
        if content is None:
            content = ""
        elif isinstance(content, list):
            texts = []
            for part in content:
                if not isinstance(part, dict) or part.get("type") != "text":
                    raise InvalidRequestError(
                        f"messages[{i}].content: only text parts are supported", "messages"
                    )
                texts.append(str(part.get("text", "")))
            content = "\n".join(texts)
        elif not isinstance(content, str):
            raise InvalidRequestError(f"messages[{i}].content must be a string", "messages")
        out.append({**m, "content": content})
    return out


class PromptTokenizer:
    """Turns a TokenizeReq into a validated GenerateReq (or raises InvalidRequestError)."""

    def __init__(self, config: EngineConfig, tokenizer: PreTrainedTokenizerBase | None = None):
        self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer(config.model_path)
        self.info = load_model_info(config, self.tokenizer)

    def prompt_ids(self, req: TokenizeReq) -> tuple[list[int], str]:
        """The prompt's token ids and the request parameter they came from."""
        given = [x is not None for x in (req.messages, req.prompt, req.input_ids)]
        if sum(given) != 1:
            raise InvalidRequestError("give exactly one of messages, prompt, input_ids", "prompt")
        if req.messages is not None:
            return self.apply_chat_template(req.messages, req.chat_template_kwargs), "messages"
        if req.prompt is not None:
            return self.tokenizer.encode(req.prompt), "prompt"
        ids = list(req.input_ids or [])
        vocab = self.info.vocab_size
        for t in ids:
            if not isinstance(t, int) or not 0 <= t < vocab:
                raise InvalidRequestError(f"token id {t} is outside the vocabulary", "prompt")
        return ids, "prompt"

    def apply_chat_template(self, messages: list[dict], kwargs: dict | None = None) -> list[int]:
        if not messages:
            raise InvalidRequestError("messages must not be empty", "messages")
        try:
            text = self.tokenizer.apply_chat_template(
                normalize_messages(messages),
                tokenize=False,
                add_generation_prompt=True,
                **(kwargs or {}),
            )
        except InvalidRequestError:
            raise
        except Exception as exc:  # noqa: BLE001 - jinja raises for messages it rejects
            raise InvalidRequestError(f"chat template failed: {exc}", "messages") from exc
        # The template already holds the special tokens (BOS, role markers): add none twice.
        return self.tokenizer.encode(text, add_special_tokens=False)

    def build(self, req: TokenizeReq) -> GenerateReq:
        ids, param = self.prompt_ids(req)
        n = len(ids)
        ctx = self.info.context_length
        if n == 0:
            raise InvalidRequestError("the prompt is empty", param)
        if n >= ctx:
            raise InvalidRequestError(
                f"This model's maximum context length is {ctx} tokens, but the prompt has "
                f"{n} tokens",
                param,
            )
        sampling = req.sampling
        if sampling.max_new_tokens is None:  # OpenAI's default: the rest of the context
            sampling = dataclasses.replace(sampling, max_new_tokens=ctx - n)
        sampling.validate(self.info.vocab_size)
        if n + sampling.max_new_tokens > ctx:
            raise InvalidRequestError(
                f"This model's maximum context length is {ctx} tokens, but {n + sampling.max_new_tokens}"
                f" were requested ({n} in the prompt, {sampling.max_new_tokens} for the completion)",
                "max_tokens",
            )
        return GenerateReq(rid=req.rid, input_ids=ids, sampling=sampling, cache_salt=req.cache_salt)
