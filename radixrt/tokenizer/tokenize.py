"""Prompt side of the tokenizer process: load the tokenizer, apply the chat template, tokenize
and validate a request before it reaches the scheduler."""

from __future__ import annotations

import dataclasses

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from radixrt.ipc.messages import DecodeReq, EncodeReq, GenerateReq, TokenizeReq
from radixrt.model_info import ModelInfo
from radixrt.sampling_params import InvalidRequestError

CHAT_ROLES = ("system", "user", "assistant", "tool", "developer")
# Arguments of apply_chat_template that come from request fields (or are ours), never from
# chat_template_kwargs.
OWN_TEMPLATE_ARGS = frozenset({"add_generation_prompt", "continue_final_message", "tokenize",
                               "conversation", "messages"})


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
        # OpenAI's `developer` role is the system role of newer models; a template that does
        # not know it (most) gets it as `system`.
        self.template_knows_developer = "developer" in str(self.tokenizer.chat_template or "")

    def prompt_ids(self, req: TokenizeReq) -> tuple[list[int], str]:
        """The prompt's token ids and the request parameter they came from."""
        given = [x is not None for x in (req.messages, req.prompt, req.input_ids)]
        if sum(given) != 1:
            raise InvalidRequestError("give exactly one of messages, prompt, input_ids", "prompt")
        if req.messages is not None:
            return self.apply_chat_template(req.messages, req.chat_template_kwargs,
                                            req.add_generation_prompt,
                                            req.continue_final_message), "messages"
        if req.prompt is not None:
            return self.tokenizer.encode(req.prompt), "prompt"
        ids = list(req.input_ids or [])
        self.check_ids(ids, "prompt")
        return ids, "prompt"

    def apply_chat_template(self, messages: list[dict], kwargs: dict | None = None,
                            add_generation_prompt: bool = True,
                            continue_final_message: bool = False) -> list[int]:
        """Token ids of the rendered chat."""
        text = self.render_chat(messages, kwargs, add_generation_prompt, continue_final_message)
        # The template already holds the special tokens (BOS, role markers): add none twice.
        return self.tokenizer.encode(text, add_special_tokens=False)

    def render_chat(self, messages: list[dict], kwargs: dict | None = None,
                    add_generation_prompt: bool = True,
                    continue_final_message: bool = False) -> str:
        """The chat as the template renders it. continue_final_message (vLLM's meaning) leaves
        the final message open-ended, so the model continues it (assistant prefill)."""
        if not messages:
            raise InvalidRequestError("messages must not be empty", "messages")
        clash = sorted(OWN_TEMPLATE_ARGS & set(kwargs or {}))
        if clash:
            raise InvalidRequestError(f"chat_template_kwargs may not set {', '.join(clash)} "
                                      "(a request field or the server's own)",
                                      "chat_template_kwargs")
        if add_generation_prompt and continue_final_message:
            raise InvalidRequestError("continue_final_message and add_generation_prompt cannot "
                                      "both be true", "add_generation_prompt")
        messages = normalize_messages(messages)
        if not self.template_knows_developer:
            messages = [{**m, "role": "system"} if m["role"] == "developer" else m
                        for m in messages]
        try:
            text = self.tokenizer.apply_chat_template(
                messages,
                tokenize=False,
                add_generation_prompt=add_generation_prompt,
                **(kwargs or {}),
            )
        except InvalidRequestError:
            raise
        except Exception as exc:  # noqa: BLE001 - jinja raises for messages it rejects
            raise InvalidRequestError(f"chat template failed: {exc}", "messages") from exc
        if continue_final_message:
            text = open_final_message(text, messages[-1]["content"])
        return text

    def encode(self, req: EncodeReq) -> list[int]:
        """/tokenize: ids of a prompt or of a rendered chat (no length limit: it only counts)."""
        if (req.prompt is None) == (req.messages is None):
            raise InvalidRequestError("give exactly one of prompt, messages", "prompt")
        if req.prompt is not None:
            text = req.prompt
        else:
            text = self.render_chat(req.messages or [], req.chat_template_kwargs,
                                    req.add_generation_prompt, req.continue_final_message)
        return self.tokenizer.encode(text, add_special_tokens=req.add_special_tokens)

    def decode(self, req: DecodeReq) -> str:
        """/detokenize: the text of token ids (special tokens included, as vLLM does)."""
        self.check_ids(req.ids, "tokens")
        return self.tokenizer.decode(req.ids)

    def check_ids(self, ids: list[int], param: str) -> None:
        vocab = self.info.vocab_size
        for t in ids:
            if not isinstance(t, int) or not 0 <= t < vocab:
                raise InvalidRequestError(f"token id {t} is outside the vocabulary", param)

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


def open_final_message(text: str, final: str) -> str:
    """The rendered chat cut right after the final message's text (dropping what the template
    closes the turn with)."""
    if not final:
        raise InvalidRequestError("continue_final_message needs a final message with text",
                                  "messages")
    end = text.rfind(final)
    if end < 0:
        raise InvalidRequestError("continue_final_message: the chat template rewrites the final "
                                  "message, so it cannot be continued", "messages")
    return text[: end + len(final)]
