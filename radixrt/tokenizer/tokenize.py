"""Prompt side of the tokenizer process: load the tokenizer, apply the chat template, tokenize
and validate a request before it reaches the scheduler.

Length is checked before any work: a prompt (or the messages, or a template's output) longer
than `max_prompt_chars` cannot fit the context, since no token covers more characters than the
vocabulary's longest entry. `build` is thread-safe: the tokenizer process runs it on worker
threads (the Rust tokenizer releases the GIL; templates render in a TemplateSandbox).
"""

from __future__ import annotations

import dataclasses
import hashlib
from importlib import metadata
from pathlib import Path

from transformers import PreTrainedTokenizerBase

from radixrt.grammar.spec import check_spec
from radixrt.ipc.messages import DecodeReq, EncodeReq, GenerateReq, TokenizeReq
from radixrt.json_cache import read_entries, write_entry
from radixrt.model_info import ModelInfo
from radixrt.sampling_params import InvalidRequestError
from radixrt.tokenizer.template_sandbox import RenderedTooLong, RenderJob, TemplateSandbox

CHAT_ROLES = ("system", "user", "assistant", "tool", "developer")
# Arguments of apply_chat_template that are the server's own, never chat_template_kwargs'.
# (add_generation_prompt / continue_final_message are request fields; in chat_template_kwargs
# they are taken as those fields, as vLLM does.)
OWN_TEMPLATE_ARGS = frozenset({"tokenize", "conversation", "messages"})


CLASS_CACHE_FILE = "tokenizer_classes.json"
_TOKENIZER_FILES = ("config.json", "tokenizer_config.json", "tokenizer.json")


def load_tokenizer(model_path: str, cache_dir: Path | None = None) -> PreTrainedTokenizerBase:
    """The tokenizer AutoTokenizer picks for `model_path`, loaded through its class directly
    once AutoTokenizer has picked it: AutoTokenizer reads config.json through the model's
    config class, whose imports (torch, torch.distributed) took ~5 s of the tokenizer
    process's start-up. The choice is cached per model files and transformers version."""
    import transformers

    from radixrt.default_model import cache_root

    file = (cache_dir or cache_root()) / CLASS_CACHE_FILE
    key = _class_cache_key(Path(model_path))
    cached = read_entries(file).get(key) if key else None
    cls = getattr(transformers, cached, None) if isinstance(cached, str) else None
    if isinstance(cls, type) and issubclass(cls, PreTrainedTokenizerBase):
        return cls.from_pretrained(model_path)
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_path)
    name = type(tokenizer).__name__
    if key and getattr(transformers, name, None) is type(tokenizer):  # not remote code
        write_entry(file, key, name)
    return tokenizer


def _class_cache_key(path: Path) -> str | None:
    """The files AutoTokenizer's choice depends on, and the transformers version; None when
    they cannot be read."""
    h = hashlib.sha256(metadata.version("transformers").encode())
    try:
        for name in _TOKENIZER_FILES:
            f = path / name
            h.update(name.encode() + (f.read_bytes() if f.is_file() else b"-"))
    except OSError:
        return None
    return h.hexdigest()[:32]


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
        # As apply_chat_template does: a key set to None is a key not given.
        out.append({k: v for k, v in {**m, "content": content}.items() if v is not None})
    return out


def message_chars(messages: list[dict]) -> int:
    """Characters of the messages' text (cheap: no rendering)."""
    n = 0
    for m in messages:
        content = m.get("content") if isinstance(m, dict) else None
        if isinstance(content, str):
            n += len(content)
        elif isinstance(content, list):
            n += sum(len(str(p.get("text", ""))) for p in content if isinstance(p, dict))
    return n


def request_size(req: TokenizeReq) -> int:
    """How much input a request carries: characters of text, or token ids."""
    if req.prompt is not None:
        return len(req.prompt)
    if req.messages is not None:
        return message_chars(req.messages)
    return len(req.input_ids or [])


def longest_token_chars(tokenizer: PreTrainedTokenizerBase) -> int:
    """Characters of the vocabulary's longest entry (byte-level BPE entries hold one character
    per byte, so this bounds the text one token can cover)."""
    return max((len(t) for t in tokenizer.get_vocab()), default=1)


class PromptTokenizer:
    """Turns a TokenizeReq into a validated GenerateReq (or raises InvalidRequestError)."""

    def __init__(self, info: ModelInfo, tokenizer: PreTrainedTokenizerBase | None = None):
        self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer(info.model_path)
        self.info = info
        # OpenAI's `developer` role is the system role of newer models; a template that does
        # not know it (most) gets it as `system`.
        self.template_knows_developer = "developer" in str(self.tokenizer.chat_template or "")
        self.backend = self.tokenizer.backend_tokenizer  # Rust: encode is thread-safe
        self.max_token_chars = longest_token_chars(self.tokenizer)
        self.max_prompt_chars = info.context_length * self.max_token_chars
        # The model's template and those requests bring render in separate children, so a
        # hostile template never delays the others.
        self.model_templates = TemplateSandbox("model")
        self.request_templates = TemplateSandbox("request")

    def close(self) -> None:
        self.model_templates.close()
        self.request_templates.close()

    def too_long(self, param: str, chars: int | None = None) -> InvalidRequestError:
        """OpenAI's context-length error, for input refused by its length in characters
        (chars None: the chat template's output)."""
        ctx, most = self.info.context_length, self.max_prompt_chars
        if chars is None:
            what = f"your messages, rendered with the chat template, are longer than {most}"
        elif param == "messages":
            what = f"your messages have {chars}"
        else:
            what = f"your prompt has {chars}"
        return InvalidRequestError(
            f"This model's maximum context length is {ctx} tokens. However, {what} characters, "
            f"more than {ctx} tokens can hold (at most {most} characters). Please reduce the "
            f"length of the {'prompt' if param == 'prompt' else 'messages'}.", param)

    def check_size(self, req: TokenizeReq) -> None:
        """Refuse (InvalidRequestError) input that cannot fit the context, before any work."""
        n = request_size(req)
        if req.input_ids is not None:
            if n >= self.info.context_length:
                raise InvalidRequestError(
                    f"This model's maximum context length is {self.info.context_length} "
                    f"tokens, but the prompt has {n} tokens", "prompt")
        elif n > self.max_prompt_chars:
            raise self.too_long("messages" if req.messages is not None else "prompt", n)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.backend.encode(text, add_special_tokens=add_special_tokens).ids

    def prompt_ids(self, req: TokenizeReq) -> tuple[list[int], str]:
        """The prompt's token ids and the request parameter they came from."""
        given = [x is not None for x in (req.messages, req.prompt, req.input_ids)]
        if sum(given) != 1:
            raise InvalidRequestError("give exactly one of messages, prompt, input_ids", "prompt")
        self.check_size(req)
        if req.messages is not None:
            return self.apply_chat_template(req.messages, req.chat_template_kwargs,
                                            req.add_generation_prompt,
                                            req.continue_final_message,
                                            req.chat_template), "messages"
        if req.prompt is not None:
            return self.encode(req.prompt), "prompt"
        ids = list(req.input_ids or [])
        self.check_ids(ids, "prompt")
        return ids, "prompt"

    def apply_chat_template(self, messages: list[dict], kwargs: dict | None = None,
                            add_generation_prompt: bool = True,
                            continue_final_message: bool = False,
                            template: str | None = None) -> list[int]:
        """Token ids of the rendered chat."""
        text = self.render_chat(messages, kwargs, add_generation_prompt, continue_final_message,
                                template)
        # The template already holds the special tokens (BOS, role markers): add none twice.
        return self.encode(text, add_special_tokens=False)

    def render_chat(self, messages: list[dict], kwargs: dict | None = None,
                    add_generation_prompt: bool = True, continue_final_message: bool = False,
                    template: str | None = None) -> str:
        """The chat as the template renders it, in a sandboxed child with a time and size
        bound. continue_final_message (vLLM's meaning) leaves the final message open-ended,
        so the model continues it (assistant prefill). `template` (or
        kwargs["chat_template"]) is one a request brought (the frontend passes it only when
        trusted); kwargs are template variables."""
        if not messages:
            raise InvalidRequestError("messages must not be empty", "messages")
        kwargs_in, kwargs = kwargs, dict(kwargs or {})
        if "add_generation_prompt" in kwargs:
            add_generation_prompt = bool(kwargs.pop("add_generation_prompt"))
        if "continue_final_message" in kwargs:
            continue_final_message = bool(kwargs.pop("continue_final_message"))
            if continue_final_message and "add_generation_prompt" not in (kwargs_in or {}):
                add_generation_prompt = False  # the fields' default when continuing
        clash = sorted(OWN_TEMPLATE_ARGS & set(kwargs))
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
        options = dict(kwargs or {})
        param = "chat_template" if template is not None else "chat_template_kwargs"
        if template is None:
            template = options.pop("chat_template", None)
        sandbox = self.model_templates if template is None else self.request_templates
        tools = options.pop("tools", None)
        job = RenderJob(
            messages=messages,
            template="",
            max_chars=self.max_prompt_chars,
            add_generation_prompt=add_generation_prompt,
            continue_final_message=False,  # done below, on the rendered text
            tools=tools,
            documents=options.pop("documents", None),
            variables={**self.tokenizer.special_tokens_map, **options},
        )
        try:
            job.template = self.tokenizer.get_chat_template(template, tools)
        except ValueError as exc:  # the model has no template, or no template of that name
            raise InvalidRequestError(f"chat template: {exc}", param) from None
        try:
            text = sandbox.render(job, "messages" if sandbox is self.model_templates else param)
        except RenderedTooLong:
            raise self.too_long("messages") from None
        if continue_final_message:
            text = open_final_message(text, messages[-1]["content"])
        return text

    def encode_request(self, req: EncodeReq) -> list[int]:
        """/tokenize: ids of a prompt or of a rendered chat, within the same length bound."""
        if (req.prompt is None) == (req.messages is None):
            raise InvalidRequestError("give exactly one of prompt, messages", "prompt")
        if req.prompt is not None:
            if len(req.prompt) > self.max_prompt_chars:
                raise self.too_long("prompt", len(req.prompt))
            text = req.prompt
        else:
            text = self.render_chat(req.messages or [], req.chat_template_kwargs,
                                    req.add_generation_prompt, req.continue_final_message)
        return self.encode(text, add_special_tokens=req.add_special_tokens)

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
        check_spec(sampling.regex, sampling.json_schema)  # a bad one is a 400, not a failed stream
        if n + sampling.max_new_tokens > ctx:
            raise InvalidRequestError(
                f"This model's maximum context length is {ctx} tokens, but {n + sampling.max_new_tokens}"
                f" were requested ({n} in the prompt, {sampling.max_new_tokens} for the completion)",
                "max_tokens",
            )
        return GenerateReq(rid=req.rid, input_ids=ids, sampling=sampling, cache_salt=req.cache_salt,
                           embed=req.embed)


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
