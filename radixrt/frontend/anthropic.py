"""Anthropic's Messages API (/v1/messages): the request becomes a chat completion (same
template, sampling and cache), the answer takes Anthropic's shape, whole or as its stream of
named events (message_start ... message_stop)."""

from __future__ import annotations

import json
from typing import Any, ClassVar, Literal

from fastapi.responses import Response
from pydantic import Field, model_validator
from pydantic_core import PydanticCustomError

from radixrt.frontend.protocol import ChatCompletionRequest, UsageInfo, _Request
from radixrt.frontend.responses import ResponseShape
from radixrt.ipc.messages import TextDelta

ROUTE = "/v1/messages"

# A marker asking Anthropic to cache the prompt up to a block: this server caches every
# prefix automatically, so the marker asks for what happens anyway.
CacheControl = dict[str, Any] | None


class TextBlock(_Request):
    type: Literal["text"]
    text: str
    cache_control: CacheControl = None

    @model_validator(mode="before")
    @classmethod
    def _only_text(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("type") not in (None, "text"):
            raise PydanticCustomError("unsupported_block", "content blocks of type {kind} are "
                                      "not supported (only text)", {"kind": data.get("type")})
        return data


class AnthropicMessage(_Request):
    role: Literal["user", "assistant"]
    content: str | list[TextBlock]


class Metadata(_Request):
    # An opaque end-user id that Anthropic keeps for abuse detection: nothing to do with it.
    user_id: str | None = None


class MessagesRequest(_Request):
    """The fields of Anthropic's create-message request this server implements."""

    DEFAULT_VALUES: ClassVar[dict[str, tuple[Any, ...]]] = {
        "service_tier": ("auto", "standard_only"),  # one tier: the standard one
    }
    UNSUPPORTED: ClassVar[dict[str, str]] = {
        "tools": "tool use on /v1/messages is not implemented yet",
        "tool_choice": "tool use on /v1/messages is not implemented yet",
        "thinking": "extended thinking is not implemented",
        "service_tier": "there is one service tier (\"auto\" or \"standard_only\")",
        "container": "code-execution containers are not implemented",
        "mcp_servers": "MCP servers are not implemented",
        "output_config": "output configuration (effort, structured output) is not implemented",
        "context_management": "context management is not implemented",
    }

    model: str
    max_tokens: int = Field(ge=1)
    messages: list[AnthropicMessage] = Field(min_length=1)
    system: str | list[TextBlock] | None = None
    stop_sequences: list[str] | None = None
    temperature: float | None = Field(default=None, ge=0.0, le=1.0)
    top_p: float | None = None
    top_k: int | None = None
    stream: bool = False
    metadata: Metadata | None = None
    cache_control: CacheControl = None

    def to_chat(self) -> ChatCompletionRequest:
        """The same request as a chat completion. A final assistant message is a prefill the
        model continues (Anthropic's meaning), as continue_final_message."""
        messages: list[dict[str, Any]] = []
        if self.system is not None:
            messages.append({"role": "system", "content": _text(self.system)})
        messages += [{"role": m.role, "content": _text(m.content)} for m in self.messages]
        prefill = self.messages[-1].role == "assistant"
        return ChatCompletionRequest.model_validate({
            "messages": messages, "max_tokens": self.max_tokens, "stream": self.stream,
            "stop": self.stop_sequences, "temperature": self.temperature,
            "top_p": self.top_p, "top_k": self.top_k, "continue_final_message": prefill})


def _text(content: str | list[TextBlock]) -> str:
    return content if isinstance(content, str) else "".join(b.text for b in content)


def stop_reason(d: TextDelta) -> tuple[str | None, str | None]:
    """(stop_reason, stop_sequence) of a finished choice."""
    if d.finish_reason == "length":
        return "max_tokens", None
    if d.finish_reason == "stop":
        if isinstance(d.matched_stop, str):
            return "stop_sequence", d.matched_stop
        return "end_turn", None
    return None, None  # aborted (the server is shutting down)


def anthropic_usage(u: UsageInfo) -> dict[str, int]:
    """Anthropic counts cached prompt tokens apart from input_tokens."""
    cached = u.prompt_tokens_details.cached_tokens
    return {"input_tokens": u.prompt_tokens - cached, "output_tokens": u.completion_tokens,
            "cache_creation_input_tokens": 0, "cache_read_input_tokens": cached}


class MessagesShape(ResponseShape):
    """/v1/messages: one text content block; streams Anthropic's named events."""

    def message(self, content: list[dict[str, Any]], usage: dict[str, int],
                reason: tuple[str | None, str | None] = (None, None)) -> dict[str, Any]:
        return {"id": self.api_id, "type": "message", "role": "assistant", "model": self.model,
                "content": content, "stop_reason": reason[0], "stop_sequence": reason[1],
                "usage": usage}

    def opening(self, indices: list[int], usage: UsageInfo) -> list[Any]:
        return [{"type": "message_start", "message": self.message([], anthropic_usage(usage))},
                {"type": "content_block_start", "index": 0,
                 "content_block": {"type": "text", "text": ""}},
                {"type": "ping"}]

    def stream_events(self, d: TextDelta, index: int) -> list[Any]:
        out: list[Any] = []
        if d.text:
            out.append({"type": "content_block_delta", "index": 0,
                        "delta": {"type": "text_delta", "text": d.text}})
        if d.finished:
            reason, seq = stop_reason(d)
            out += [{"type": "content_block_stop", "index": 0},
                    {"type": "message_delta",
                     "delta": {"stop_reason": reason, "stop_sequence": seq},
                     "usage": {"output_tokens": d.completion_tokens}}]
        return out

    def closing(self, usage: UsageInfo, include_usage: bool) -> list[Any]:
        return [{"type": "message_stop"}]

    def stream_error(self, error: Any) -> Any:
        return error.anthropic_body()

    def event(self, payload: Any) -> str:
        return f"event: {payload['type']}\ndata: {json.dumps(payload)}\n\n"

    def choice(self, d: TextDelta, index: int, stream: bool) -> Any:
        return d

    def chunk(self, choices: list[Any], usage: UsageInfo | None = None) -> Any:
        raise NotImplementedError  # streams are built by stream_events

    def response(self, choices: list[Any], usage: UsageInfo) -> Response:
        [d] = choices
        body = self.message([{"type": "text", "text": d.text}], anthropic_usage(usage),
                            stop_reason(d))
        return Response(json.dumps(body), media_type="application/json")
