"""Pydantic models of the OpenAI API's requests (and radixrt's native /generate); the
answers' models are in frontend/answers.py.

Requests are parsed with `parse_request` (strict JSON: a string where a number belongs is a
400, not a silent conversion). A field the server does not implement is a 400 naming it
(frontend/fields.py lists the known ones); an explicit null means the field's default.
Value ranges are checked by SamplingParams.validate, the one place that knows them.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any, ClassVar, Literal, TypeVar

from pydantic import Field, TypeAdapter, ValidationError, model_validator

from radixrt.frontend.fields import (
    OPENAI_DEFAULT_VALUES,
    OPENAI_UNSUPPORTED,
    _Request,
    unsupported_message,
)
from radixrt.frontend.tools import (
    AssistantToolCall,
    ToolChoice,
    ToolDef,
)
from radixrt.grammar.spec import JSON_OBJECT_SCHEMA, check_spec
from radixrt.sampling_params import InvalidRequestError, SamplingParams


class TextPart(_Request):
    type: Literal["text"]
    text: str


class ChatMessage(_Request):
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_call_id: str | None = None
    tool_calls: list[AssistantToolCall] | None = None  # an assistant's earlier calls
    # An assistant's earlier reasoning, as answers give it (vLLM's field): the templates of
    # thinking models render it where they keep it (Qwen3: within the current tool loop).
    reasoning_content: str | None = None

    @model_validator(mode="after")
    def _reasoning_is_the_assistants(self) -> ChatMessage:
        if self.reasoning_content is not None and self.role != "assistant":
            raise ValueError("reasoning_content belongs to assistant messages only")
        return self

    def to_dict(self, i: int = 0) -> dict[str, Any]:
        out: dict[str, Any] = {"role": self.role, "content": self.content}
        if isinstance(self.content, list):
            out["content"] = [p.model_dump() for p in self.content]
        for key in ("name", "tool_call_id", "reasoning_content"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.tool_calls:  # arguments as dicts, as templates expect (vLLM and HF alike)
            out["tool_calls"] = [c.to_template(f"messages[{i}].tool_calls[{j}]")
                                 for j, c in enumerate(self.tool_calls)]
        return out


class JsonSchemaFormat(_Request):
    name: str | None = None
    description: str | None = None
    schema_: dict[str, Any] | bool | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Request):
    """OpenAI's response_format: free text, any JSON object, or JSON under a schema."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    def to_schema(self) -> str | None:
        if self.type == "text":
            return None
        if self.type == "json_object":
            return JSON_OBJECT_SCHEMA
        if self.json_schema is None or self.json_schema.schema_ is None:
            raise InvalidRequestError("response_format json_schema needs json_schema.schema",
                                      "response_format")
        return json.dumps(self.json_schema.schema_)


class StreamOptions(_Request):
    DEFAULT_VALUES = {"include_obfuscation": (False,)}  # deltas are never padded
    UNSUPPORTED = {"include_obfuscation": "stream obfuscation is not implemented"}

    include_usage: bool = False


class _SamplingRequest(_Request):
    """Fields shared by chat and text completions (OpenAI's plus vLLM/SGLang extensions).

    Unset sampling fields take the model's generation_config.json defaults, then OpenAI's.
    """

    DEFAULT_VALUES = OPENAI_DEFAULT_VALUES
    UNSUPPORTED = OPENAI_UNSUPPORTED
    OPENAI_MAX_TOKENS: ClassVar[int | None] = None  # None: the rest of the context

    model: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    n: int = 1
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[str, float] | None = None
    # An opaque end-user id that OpenAI keeps for abuse monitoring: it asks nothing of the
    # generation, so doing nothing with it is its meaning here.
    user: str | None = None
    # Extensions (vLLM / SGLang)
    top_k: int | None = None  # 0 and -1: no limit
    min_p: float | None = None
    repetition_penalty: float | None = None
    min_tokens: int = 0
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    cache_salt: str | None = None
    # Structured output extensions (vLLM/SGLang names): a regex or a JSON schema.
    regex: str | None = None
    json_schema: str | dict[str, Any] | None = None

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def _max_new_tokens(self) -> int | None:
        return self.max_tokens

    def _logprobs(self) -> tuple[bool, int]:
        return False, 0

    def _prompt_logprobs(self) -> int | None:
        return None

    def _min_max_tokens(self) -> int:
        return 1

    def _grammar(self) -> tuple[str | None, str | None]:
        """(regex, json_schema text) the output is constrained to."""
        schema = self.json_schema
        return self.regex, json.dumps(schema) if isinstance(schema, dict) else schema

    def to_sampling_params(self, defaults: Mapping[str, Any] | None = None) -> SamplingParams:
        """SamplingParams for the whole request (n included; the frontend splits n).

        `defaults` are the model's (ModelInfo.sampling_defaults): a field the request leaves
        unset takes the model's value, else OpenAI's. max_new_tokens None means "the rest of
        the context", resolved by the tokenizer once it knows the prompt length.
        """
        model = defaults or {}

        def pick(value: Any, key: str, openai_default: Any) -> Any:
            return value if value is not None else model.get(key, openai_default)

        bias: dict[int, float] | None = None
        if self.logit_bias is not None:
            try:
                bias = {int(k): float(v) for k, v in self.logit_bias.items()}
            except ValueError:
                raise InvalidRequestError("logit_bias keys must be token ids", "logit_bias") from None
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        logprobs, top = self._logprobs()
        max_new = pick(self._max_new_tokens(), "max_new_tokens", self.OPENAI_MAX_TOKENS)
        regex, json_schema = self._grammar()
        check_spec(regex, json_schema)
        if max_new is not None and max_new < self._min_max_tokens():
            raise InvalidRequestError(f"max_tokens must be at least {self._min_max_tokens()}",
                                      "max_tokens")
        return SamplingParams(
            max_new_tokens=max_new,
            min_new_tokens=self.min_tokens,
            temperature=pick(self.temperature, "temperature", 1.0),
            top_p=pick(self.top_p, "top_p", 1.0),
            top_k=pick(self.top_k, "top_k", -1),
            min_p=pick(self.min_p, "min_p", 0.0),
            repetition_penalty=pick(self.repetition_penalty, "repetition_penalty", 1.0),
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            seed=self.seed,
            stop=stop,
            stop_token_ids=list(self.stop_token_ids or []),
            ignore_eos=self.ignore_eos,
            logprobs=logprobs,
            top_logprobs=top,
            prompt_logprobs=self._prompt_logprobs(),
            logit_bias=bias,
            skip_special_tokens=self.skip_special_tokens,
            include_stop_str_in_output=self.include_stop_str_in_output,
            n=self.n,
            regex=regex,
            json_schema=json_schema,
        )


class ChatCompletionRequest(_SamplingRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = None
    # OpenAI's successor of `user` for abuse monitoring: nothing to do, as for `user`.
    safety_identifier: str | None = None
    # A hint where OpenAI routes a request for cache hits; this server's prefix cache is
    # keyed on the prompt itself, so there is nothing to do with it.
    prompt_cache_key: str | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    # vLLM's: end the prompt with the assistant's turn opener (default: true unless
    # continue_final_message), or leave the final message open for the model to continue.
    add_generation_prompt: bool | None = None
    continue_final_message: bool = False
    chat_template: str | None = None  # refused unless --trust-request-chat-template
    response_format: ResponseFormat | None = None
    tools: list[ToolDef] | None = None
    tool_choice: ToolChoice | None = None  # default: auto with tools, else none
    parallel_tool_calls: bool = True

    def _grammar(self) -> tuple[str | None, str | None]:
        regex, schema = super()._grammar()
        fmt = self.response_format.to_schema() if self.response_format else None
        if fmt is not None and (regex is not None or schema is not None):
            raise InvalidRequestError("response_format cannot be combined with regex or "
                                      "json_schema", "response_format")
        return regex, fmt or schema

    def _max_new_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def _logprobs(self) -> tuple[bool, int]:
        if self.top_logprobs is not None and not self.logprobs and self.top_logprobs > 0:
            raise InvalidRequestError("top_logprobs needs logprobs set to true", "top_logprobs")
        return self.logprobs, self.top_logprobs or 0

    def generation_prompt(self) -> bool:
        return generation_prompt(self.add_generation_prompt, self.continue_final_message)


def generation_prompt(add_generation_prompt: bool | None, continue_final_message: bool) -> bool:
    """Whether the template adds the assistant's turn opener: as asked, else unless the final
    message is continued; both at once is a 400 (vLLM's rule)."""
    if continue_final_message and add_generation_prompt:
        raise InvalidRequestError("continue_final_message and add_generation_prompt cannot "
                                  "both be true", "add_generation_prompt")
    if add_generation_prompt is None:
        return not continue_final_message
    return add_generation_prompt


class CompletionRequest(_SamplingRequest):
    OPENAI_MAX_TOKENS = 16  # OpenAI's default for (legacy) completions

    prompt: str | list[str] | list[int] | list[list[int]]
    logprobs: int | None = None
    # The prompt's text before each choice's; with logprobs, the prompt tokens' logprobs
    # (the first one's null) before the choice's (how evaluation harnesses score text).
    echo: bool = False

    def _logprobs(self) -> tuple[bool, int]:
        if self.logprobs is None:
            return False, 0
        if not 0 <= self.logprobs <= 20:
            raise InvalidRequestError("logprobs must be between 0 and 20", "logprobs")
        return True, self.logprobs

    def _prompt_logprobs(self) -> int | None:
        return self.logprobs if self.echo else None

    def _min_max_tokens(self) -> int:
        return 0 if self.echo else 1  # echo with max_tokens 0: score the prompt only

    def prompts(self) -> list[str] | list[list[int]]:
        """The batch of prompts: one string / id list per entry."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if not p:
            raise InvalidRequestError("prompt must not be empty", "prompt")
        if isinstance(p[0], int):
            return [p]  # type: ignore[list-item]
        return p  # type: ignore[return-value]


class GenerateRequest(_Request):
    """radixrt's native endpoint (SGLang's /generate shape)."""

    text: str | None = None
    input_ids: list[int] | None = None
    sampling_params: dict[str, Any] | None = None
    stream: bool = False
    cache_salt: str | None = None

    def to_sampling_params(self, defaults: Mapping[str, Any] | None = None) -> SamplingParams:
        """The request's sampling_params over the model's defaults (null: the default)."""
        given = {k: v for k, v in (self.sampling_params or {}).items() if v is not None}
        d = {**(defaults or {}), **given}
        unknown = sorted(set(d) - set(SamplingParams.__dataclass_fields__))
        if unknown:
            raise InvalidRequestError(f"unknown sampling parameter(s): {', '.join(unknown)}",
                                      unknown[0])
        if isinstance(d.get("stop"), str):
            d["stop"] = [d["stop"]]
        try:
            return _SAMPLING.validate_json(json.dumps(d), strict=True)
        except ValidationError as exc:
            raise validation_error(exc) from None


_SAMPLING = TypeAdapter(SamplingParams)


def check_sampling(sp: SamplingParams, vocab_size: int, context_length: int) -> None:
    """Range checks before any work is queued (the tokenizer checks again, knowing the prompt).

    An unset max_tokens (None) means "the rest of the context": check it as the context.
    """
    dataclasses.replace(sp, max_new_tokens=sp.max_new_tokens or context_length).validate(
        vocab_size)


R = TypeVar("R", bound=_Request)


def validation_error(exc: ValidationError,
                     model: type[_Request] | None = None) -> InvalidRequestError:
    """A pydantic error as an InvalidRequestError naming the top-level field: the deepest one
    (of a union's alternatives, the one that got furthest says most)."""
    err = max(exc.errors(), key=lambda e: len(e.get("loc", ())))
    loc = [str(x) for x in err.get("loc", ())]
    if err["type"] == "json_invalid":
        return InvalidRequestError(f"malformed JSON body: {err['msg']}", None)
    where = ".".join(loc)
    if err["type"] == "extra_forbidden":
        reasons = model.UNSUPPORTED if model is not None and len(loc) == 1 else {}
        return InvalidRequestError(unsupported_message(where, reasons), loc[0])
    return InvalidRequestError(f"{where}: {err['msg']}" if where else err["msg"],
                               loc[0] if loc else None)


def parse_request(model: type[R], body: bytes) -> R:
    try:
        return model.model_validate_json(body, strict=True)
    except ValidationError as exc:
        raise validation_error(exc, model) from None
