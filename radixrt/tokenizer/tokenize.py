"""Prompt side of the tokenizer process: load the tokenizer, apply the chat template, tokenize
and validate a request before it reaches the scheduler."""

from __future__ import annotations

import dataclasses

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from radixrt.grammar.spec import check_spec
from radixrt.ipc.messages import GenerateReq, TokenizeReq
from radixrt.model_info import ModelInfo
from radixrt.sampling_params import InvalidRequestError

CHAT_ROLES = ("system", "user", "assistant", "tool", "developer")


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

    def __init__(self, info: ModelInfo, tokenizer: PreTrainedTokenizerBase | None = None):
        self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer(info.model_path)
        self.info = info

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
        check_spec(sampling.regex, sampling.json_schema)  # a bad one is a 400, not a failed stream
        if n + sampling.max_new_tokens > ctx:
            raise InvalidRequestError(
                f"This model's maximum context length is {ctx} tokens, but {n + sampling.max_new_tokens}"
                f" were requested ({n} in the prompt, {sampling.max_new_tokens} for the completion)",
                "max_tokens",
            )
        return GenerateReq(rid=req.rid, input_ids=ids, sampling=sampling, cache_salt=req.cache_salt)
