"""Anthropic's Messages API (/v1/messages): the request becomes a chat completion (same
template, sampling and cache), the answer takes Anthropic's shape, whole or as its stream of
named events (message_start ... message_stop)."""

from __future__ import annotations

import json
from typing import Any, ClassVar, Literal

from fastapi.responses import Response
from pydantic import Field, model_validator
from pydantic_core import PydanticCustomError

from radixrt.frontend.answers import UsageInfo
from radixrt.frontend.chat_output import ChatOutput
from radixrt.frontend.protocol import ChatCompletionRequest, _Request
from radixrt.frontend.responses import ResponseShape
from radixrt.frontend.tool_parsers import merge_calls
from radixrt.ipc.messages import TextDelta
from radixrt.sampling_params import SamplingParams

ROUTE = "/v1/messages"

# A marker asking Anthropic to cache the prompt up to a block: this server caches every
# prefix automatically, so the marker asks for what happens anyway.
CacheControl = dict[str, Any] | None


def _only(kinds: tuple[str, ...], data: Any) -> Any:
    if isinstance(data, dict) and data.get("type") not in (None, *kinds):
        raise PydanticCustomError("unsupported_block", "content blocks of type {kind} are "
                                  "not supported (only {kinds})",
                                  {"kind": data.get("type"), "kinds": ", ".join(kinds)})
    return data


class TextBlock(_Request):
    type: Literal["text"]
    text: str
    cache_control: CacheControl = None

    @model_validator(mode="before")
    @classmethod
    def _only_text(cls, data: Any) -> Any:
        return _only(("text",), data)


class ContentBlock(_Request):
    """A message's block: text, a tool_use (the assistant's call), a tool_result (its answer,
    in a user message)."""

    type: Literal["text", "tool_use", "tool_result"]
    text: str | None = None
    id: str | None = None  # tool_use
    name: str | None = None
    input: dict[str, Any] | None = None
    tool_use_id: str | None = None  # tool_result
    content: str | list[TextBlock] | None = None
    is_error: bool | None = None
    cache_control: CacheControl = None

    @model_validator(mode="before")
    @classmethod
    def _known(cls, data: Any) -> Any:
        return _only(("text", "tool_use", "tool_result"), data)


class AnthropicTool(_Request):
    name: str
    description: str | None = None
    input_schema: dict[str, Any]
    cache_control: CacheControl = None


class AnthropicToolChoice(_Request):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool | None = None


class AnthropicMessage(_Request):
    role: Literal["user", "assistant"]
    content: str | list[ContentBlock]

    def to_chat(self) -> list[dict[str, Any]]:
        """As chat messages: tool_use blocks become the assistant's tool_calls, tool_result
        blocks `tool` messages (before the user's text of the same turn)."""
        if isinstance(self.content, str):
            return [{"role": self.role, "content": self.content}]
        text = "".join(b.text or "" for b in self.content if b.type == "text")
        if self.role == "assistant":
            calls = [{"id": b.id, "type": "function", "function": {
                "name": b.name, "arguments": json.dumps(b.input or {})}}
                for b in self.content if b.type == "tool_use"]
            return [{"role": "assistant", "content": text or None, **(
                {"tool_calls": calls} if calls else {})}]
        out: list[dict[str, Any]] = [
            {"role": "tool", "tool_call_id": b.tool_use_id, "content": _text(b.content or "")}
            for b in self.content if b.type == "tool_result"]
        if text or not out:
            out.append({"role": "user", "content": text})
        return out


class Metadata(_Request):
    # An opaque end-user id that Anthropic keeps for abuse detection: nothing to do with it.
    user_id: str | None = None


class MessagesRequest(_Request):
    """The fields of Anthropic's create-message request this server implements."""

    DEFAULT_VALUES: ClassVar[dict[str, tuple[Any, ...]]] = {
        "service_tier": ("auto", "standard_only"),  # one tier: the standard one
    }
    UNSUPPORTED: ClassVar[dict[str, str]] = {
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
    tools: list[AnthropicTool] | None = None
    tool_choice: AnthropicToolChoice | None = None

    def to_chat(self) -> ChatCompletionRequest:
        """The same request as a chat completion. A final assistant message is a prefill the
        model continues (Anthropic's meaning), as continue_final_message."""
        messages: list[dict[str, Any]] = []
        if self.system is not None:
            messages.append({"role": "system", "content": _text(self.system)})
        messages += [c for m in self.messages for c in m.to_chat()]
        last = self.messages[-1]
        prefill = last.role == "assistant" and not (
            isinstance(last.content, list) and any(b.type == "tool_use" for b in last.content))
        tools: dict[str, Any] = {}
        if self.tools:
            tools["tools"] = [{"type": "function", "function": {
                "name": t.name, "description": t.description, "parameters": t.input_schema}}
                for t in self.tools]
        if self.tool_choice is not None:
            c = self.tool_choice
            tools["tool_choice"] = ({"type": "function", "function": {"name": c.name or ""}}
                                    if c.type == "tool" else
                                    {"auto": "auto", "any": "required", "none": "none"}[c.type])
            tools["parallel_tool_calls"] = not c.disable_parallel_tool_use
        return ChatCompletionRequest.model_validate({
            "messages": messages, "max_tokens": self.max_tokens, "stream": self.stream,
            "stop": self.stop_sequences, "temperature": self.temperature,
            "top_p": self.top_p, "top_k": self.top_k, "continue_final_message": prefill,
            **tools})


def _text(content: str | list[TextBlock]) -> str:
    return content if isinstance(content, str) else "".join(b.text for b in content)


def stop_reason(d: TextDelta, called: bool = False) -> tuple[str | None, str | None]:
    """(stop_reason, stop_sequence) of a finished choice (`called`: it made tool calls)."""
    if d.finish_reason == "length":
        return "max_tokens", None
    if d.finish_reason == "stop":
        if called:
            return "tool_use", None
        if isinstance(d.matched_stop, str):
            return "stop_sequence", d.matched_stop
        return "end_turn", None
    return None, None  # aborted (the server is shutting down)


def anthropic_usage(u: UsageInfo) -> dict[str, int]:
    """Anthropic counts cached prompt tokens apart from input_tokens."""
    cached = u.prompt_tokens_details.cached_tokens
    return {"input_tokens": u.prompt_tokens - cached, "output_tokens": u.completion_tokens,
            "cache_creation_input_tokens": 0, "cache_read_input_tokens": cached}


def tool_use_id(call_id: str) -> str:
    return "toolu_" + call_id.removeprefix("call_")


class MessagesShape(ResponseShape):
    """/v1/messages: a text block, and tool_use blocks when the request has tools (parsed as
    for chat completions, frontend/chat_output.py); streams Anthropic's named events."""

    def __init__(self, api_id: str, model: str, sp: SamplingParams,
                 tool_parser: str | None = None) -> None:
        super().__init__(api_id, model, sp)
        self.tool_parser = tool_parser
        self.output = ChatOutput("none", tool_parser)  # the stream's (one choice: n is 1)
        self.block, self.block_kind = 0, "text"  # the stream's open content block

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
        _, parsed = self.output.feed(d.text, d.finished)
        if parsed.content:
            if self.block_kind != "text":
                out += self._next_block({"type": "text", "text": ""})
            out.append({"type": "content_block_delta", "index": self.block,
                        "delta": {"type": "text_delta", "text": parsed.content}})
        for p in parsed.calls:
            if p.id is not None:
                out += self._next_block({"type": "tool_use", "id": tool_use_id(p.id),
                                         "name": p.name, "input": {}})
            if p.arguments:
                out.append({"type": "content_block_delta", "index": self.block,
                            "delta": {"type": "input_json_delta", "partial_json": p.arguments}})
        if d.finished:
            reason, seq = stop_reason(d, self.output.finish_reason("stop") == "tool_calls")
            out += [{"type": "content_block_stop", "index": self.block},
                    {"type": "message_delta",
                     "delta": {"stop_reason": reason, "stop_sequence": seq},
                     "usage": {"output_tokens": d.completion_tokens}}]
        return out

    def _next_block(self, block: dict[str, Any]) -> list[Any]:
        """Close the open block, open the next one."""
        self.block += 1
        self.block_kind = block["type"]
        return [{"type": "content_block_stop", "index": self.block - 1},
                {"type": "content_block_start", "index": self.block, "content_block": block}]

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
        output = ChatOutput("none", self.tool_parser)
        _, parsed = output.feed(d.text, final=True)
        calls = merge_calls(parsed.calls)
        blocks: list[dict[str, Any]] = []
        if parsed.content.strip() or not calls:
            blocks.append({"type": "text", "text": parsed.content.strip() if calls else d.text})
        for c in calls:
            try:
                args = json.loads(c.arguments)
            except json.JSONDecodeError:  # cut short (max_tokens): keep what there is as text
                blocks.append({"type": "text", "text": c.arguments})
                continue
            blocks.append({"type": "tool_use", "id": tool_use_id(c.id), "name": c.name,
                           "input": args})
        reason = stop_reason(d, output.finish_reason("stop") == "tool_calls")
        body = self.message(blocks, anthropic_usage(usage), reason)
        return Response(json.dumps(body), media_type="application/json")
