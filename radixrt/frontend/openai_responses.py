"""OpenAI's Responses API (/v1/responses): the request becomes a chat completion (same
template, sampling, tools, structured output and cache), the answer takes the Responses
shape: output items (reasoning, message, function_call), whole or as the stream of typed
events (response.created ... response.completed).

Nothing is stored (store: false is the only value taken), so previous_response_id and
conversations are refused: a client sends the whole conversation as input items, the
assistant's earlier messages and function calls included, as it does with store: false.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, ClassVar, Literal

from fastapi.responses import Response
from pydantic import Field, TypeAdapter, ValidationError

from radixrt.frontend.answers import UsageInfo
from radixrt.frontend.chat_output import ChatOutput
from radixrt.frontend.fields import OPENAI_DEFAULT_VALUES, OPENAI_UNSUPPORTED, _Request
from radixrt.frontend.protocol import ChatCompletionRequest, validation_error
from radixrt.frontend.responses import ResponseShape
from radixrt.frontend.tool_parsers import merge_calls
from radixrt.ipc.messages import TextDelta
from radixrt.sampling_params import InvalidRequestError, SamplingParams

ROUTE = "/v1/responses"


class TextContent(_Request):
    """A text part of an input message; output_text is an earlier answer sent back, whose
    annotations and logprobs describe it and ask nothing of this one."""

    type: Literal["input_text", "output_text"]
    text: str
    annotations: list[Any] | None = None
    logprobs: list[Any] | None = None


class MessageItem(_Request):
    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[TextContent]
    id: str | None = None  # an earlier output item's id and status, sent back
    status: str | None = None

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class FunctionCallItem(_Request):
    """The assistant's earlier call of a function."""

    type: Literal["function_call"]
    call_id: str
    name: str
    arguments: str
    id: str | None = None
    status: str | None = None


class FunctionCallOutputItem(_Request):
    """What a function call returned."""

    type: Literal["function_call_output"]
    call_id: str
    output: str | list[TextContent]
    id: str | None = None
    status: str | None = None


class ReasoningText(_Request):
    type: Literal["reasoning_text", "summary_text"]
    text: str


class ReasoningItem(_Request):
    """The assistant's earlier reasoning, sent back with the turn it preceded (a thinking
    model's template renders it where it keeps it)."""

    type: Literal["reasoning"]
    summary: list[ReasoningText] = Field(default_factory=list)
    content: list[ReasoningText] | None = None
    id: str | None = None
    status: str | None = None

    def text(self) -> str:
        return "".join(p.text for p in (self.content or self.summary))


ITEMS: dict[str, TypeAdapter[Any]] = {
    "message": TypeAdapter(MessageItem), "function_call": TypeAdapter(FunctionCallItem),
    "function_call_output": TypeAdapter(FunctionCallOutputItem),
    "reasoning": TypeAdapter(ReasoningItem)}
Item = MessageItem | FunctionCallItem | FunctionCallOutputItem | ReasoningItem


class FunctionTool(_Request):
    type: Literal["function"]
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class TextFormat(_Request):
    type: Literal["text", "json_object", "json_schema"]
    name: str | None = None
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class TextConfig(_Request):
    UNSUPPORTED: ClassVar[dict[str, str]] = {"verbosity": "there is no verbosity control"}

    format: TextFormat | None = None


class NamedFunction(_Request):
    type: Literal["function"]
    name: str


class ResponsesRequest(_Request):
    """The fields of OpenAI's create-response request this server implements."""

    DEFAULT_VALUES: ClassVar[dict[str, tuple[Any, ...]]] = {
        **OPENAI_DEFAULT_VALUES, "background": (False,), "truncation": ("disabled",),
        "include": ([],)}
    UNSUPPORTED: ClassVar[dict[str, str]] = {
        **OPENAI_UNSUPPORTED,
        "store": "this server stores no responses (only store: false)",
        "previous_response_id": "responses are not stored: send the whole conversation as "
                                "input items",
        "conversation": "conversations are not stored: send the whole conversation as input "
                        "items",
        "background": "background responses are not implemented (only background: false)",
        "truncation": "the input is never truncated (only truncation: \"disabled\")",
        "include": "no extra output data is implemented (only include: [])",
        "reasoning": "this server runs no reasoning budget",
        "prompt": "prompt templates are not implemented",
        "max_tool_calls": "a limit on tool calls is not implemented",
        "top_logprobs": "logprobs are not implemented on this endpoint (chat completions has "
                        "them)",
        "stream_options": "stream options are not implemented on this endpoint",
    }

    model: str | None = None
    input: str | list[dict[str, Any]]
    instructions: str | None = None
    max_output_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = None
    top_p: float | None = None
    stream: bool = False
    tools: list[FunctionTool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedFunction | None = None
    parallel_tool_calls: bool = True
    text: TextConfig | None = None
    # Opaque ids for abuse monitoring and a routing hint: nothing to do (as in chat).
    user: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None

    def items(self) -> list[Item]:
        if isinstance(self.input, str):
            return [MessageItem(role="user", content=self.input)]
        out = []
        for i, raw in enumerate(self.input):
            kind = raw.get("type", "message") if isinstance(raw, dict) else None
            if kind not in ITEMS:
                raise InvalidRequestError(f"input[{i}]: input items of type {kind!r} are not "
                                          f"supported (only {', '.join(ITEMS)})", "input")
            try:
                out.append(ITEMS[kind].validate_python(raw, strict=True))
            except ValidationError as exc:
                err = validation_error(exc)
                raise InvalidRequestError(f"input[{i}]: {err}", "input") from None
        return out

    def messages(self) -> list[dict[str, Any]]:
        """As chat messages: consecutive function calls become one assistant message's
        tool_calls, their outputs `tool` messages; a reasoning item becomes the
        reasoning_content of the assistant turn after it."""
        msgs: list[dict[str, Any]] = []
        if self.instructions is not None:
            msgs.append({"role": "system", "content": self.instructions})
        reasoning: str | None = None  # waiting for its assistant turn
        for item in self.items():
            if isinstance(item, ReasoningItem):
                reasoning = (reasoning or "") + item.text()
                continue
            last = msgs[-1] if msgs else None
            if isinstance(item, MessageItem):
                msgs.append({"role": item.role, "content": item.text()})
            elif isinstance(item, FunctionCallItem):
                call = {"id": item.call_id, "type": "function",
                        "function": {"name": item.name, "arguments": item.arguments}}
                if last is not None and last["role"] == "assistant" and reasoning is None:
                    # (the text it said before calling, or the calls before this one)
                    last.setdefault("tool_calls", []).append(call)
                else:
                    msgs.append({"role": "assistant", "content": None, "tool_calls": [call]})
            else:
                output = item.output if isinstance(item.output, str) else "".join(
                    p.text for p in item.output)
                msgs.append({"role": "tool", "tool_call_id": item.call_id, "content": output})
            if reasoning is not None:
                if msgs[-1]["role"] != "assistant":
                    break
                msgs[-1]["reasoning_content"], reasoning = reasoning, None
        if reasoning is not None:
            raise InvalidRequestError("a reasoning input item must come right before the "
                                      "assistant message or function call it led to", "input")
        return msgs

    def to_chat(self) -> ChatCompletionRequest:
        chat: dict[str, Any] = {
            "messages": self.messages(), "max_completion_tokens": self.max_output_tokens,
            "temperature": self.temperature, "top_p": self.top_p, "stream": self.stream,
            "parallel_tool_calls": self.parallel_tool_calls, "user": self.user,
            "safety_identifier": self.safety_identifier,
            "prompt_cache_key": self.prompt_cache_key}
        if self.tools:
            chat["tools"] = [{"type": "function", "function": t.model_dump(
                exclude={"type"}, exclude_none=True)} for t in self.tools]
        if isinstance(self.tool_choice, NamedFunction):
            chat["tool_choice"] = {"type": "function", "function": {"name": self.tool_choice.name}}
        elif self.tool_choice is not None:
            chat["tool_choice"] = self.tool_choice
        fmt = self.text.format if self.text is not None else None
        if fmt is not None and fmt.type == "json_schema":
            chat["response_format"] = {"type": "json_schema", "json_schema": fmt.model_dump(
                exclude={"type"}, exclude_none=True, by_alias=True)}
        elif fmt is not None:
            chat["response_format"] = {"type": fmt.type}
        try:
            return ChatCompletionRequest.model_validate(
                {k: v for k, v in chat.items() if v is not None})
        except ValidationError as exc:
            raise validation_error(exc) from None

    def echoed(self) -> dict[str, Any]:
        """The request's settings a Response object repeats."""
        fmt = self.text.format if self.text is not None and self.text.format else None
        return {
            "instructions": self.instructions, "max_output_tokens": self.max_output_tokens,
            "temperature": self.temperature, "top_p": self.top_p,
            "parallel_tool_calls": self.parallel_tool_calls,
            "tool_choice": (self.tool_choice.model_dump() if isinstance(
                self.tool_choice, NamedFunction) else self.tool_choice or "auto"),
            "tools": [t.model_dump(exclude_none=True) for t in self.tools or []],
            "text": {"format": fmt.model_dump(exclude_none=True, by_alias=True) if fmt
                     else {"type": "text"}},
            "user": self.user, "safety_identifier": self.safety_identifier,
            "prompt_cache_key": self.prompt_cache_key}


def responses_usage(u: UsageInfo) -> dict[str, Any]:
    return {"input_tokens": u.prompt_tokens, "output_tokens": u.completion_tokens,
            "total_tokens": u.total_tokens,
            "input_tokens_details": {"cached_tokens": u.prompt_tokens_details.cached_tokens,
                                     "cache_write_tokens": 0},
            "output_tokens_details": {"reasoning_tokens": 0}}


def _id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


class ResponsesShape(ResponseShape):
    """/v1/responses: a reasoning item (thinking models), a message item and function_call
    items, parsed as for chat completions (frontend/chat_output.py); streams the typed
    events, each item opened (output_item.added), filled (deltas) and closed (done)."""

    def __init__(self, api_id: str, model: str, sp: SamplingParams, echoed: dict[str, Any],
                 reasoning: str = "none", tool_parser: str | None = None) -> None:
        super().__init__(api_id, model, sp)
        self.echoed, self.reasoning, self.tool_parser = echoed, reasoning, tool_parser
        self.output = ChatOutput(reasoning, tool_parser)  # the stream's (one choice)
        self.items: list[dict[str, Any]] = []  # the stream's output items so far
        self.open: dict[str, Any] | None = None  # the item being streamed
        self.seq = 0
        self.last: TextDelta | None = None
        self.held = ""  # whitespace that may precede a tool call

    # ------------------------------------------------------------ the Response object

    def body(self, status: str, output: list[dict[str, Any]],
             usage: UsageInfo | None = None) -> dict[str, Any]:
        return {"id": self.api_id, "object": "response", "created_at": self.created,
                "status": status, "model": self.model, "output": output, "error": None,
                "incomplete_details": ({"reason": "max_output_tokens"}
                                       if status == "incomplete" else None),
                "usage": responses_usage(usage) if usage is not None else None,
                "store": False, "background": False, "truncation": "disabled",
                "previous_response_id": None, "reasoning": None, "metadata": {},
                "completed_at": time.time() if status != "in_progress" else None,
                **self.echoed}

    @staticmethod
    def status(d: TextDelta | None) -> str:
        return "incomplete" if d is not None and d.finish_reason == "length" else "completed"

    def whole_items(self, d: TextDelta) -> list[dict[str, Any]]:
        output = ChatOutput(self.reasoning, self.tool_parser)
        reasoning, parsed = output.feed(d.text, final=True)
        calls = merge_calls(parsed.calls)
        status = "incomplete" if d.finish_reason == "length" else "completed"
        items = []
        if reasoning:
            items.append(reasoning_item(reasoning))
        text = parsed.content.strip() if calls else parsed.content
        if text or not calls:
            items.append(message_item(text, status))
        items += [call_item(c.id, c.name, c.arguments, status) for c in calls]
        return items

    def response(self, choices: list[Any], usage: UsageInfo) -> Response:
        [d] = choices
        body = self.body(self.status(d), self.whole_items(d), usage)
        return Response(json.dumps(body), media_type="application/json")

    def choice(self, d: TextDelta, index: int, stream: bool) -> Any:
        return d

    def chunk(self, choices: list[Any], usage: UsageInfo | None = None) -> Any:
        raise NotImplementedError  # streams are built by stream_events

    # ------------------------------------------------------------ the stream

    def opening(self, indices: list[int], usage: UsageInfo) -> list[Any]:
        start = self.body("in_progress", [])
        return [{"type": "response.created", "response": start},
                {"type": "response.in_progress", "response": start}]

    def stream_events(self, d: TextDelta, index: int) -> list[Any]:
        self.last = d
        out: list[Any] = []
        reasoning, parsed = self.output.feed(d.text, d.finished)
        if reasoning:
            out += self._switch_to("reasoning", reasoning_item(""))
            out.append(self._event("response.reasoning_text.delta", content_index=0,
                                   delta=reasoning))
            self._grow(reasoning)
        content = parsed.content
        if content and self.output.tools is not None and (
                self.open is None or self.open["type"] != "message"):
            # Whitespace before a call opens no message: held until text follows.
            content, self.held = self.held + content, ""
            if not content.strip():
                self.held, content = content, ""
        if content:
            out += self._switch_to("message", message_item("", "in_progress"))
            out.append(self._event("response.output_text.delta", content_index=0,
                                   delta=content, logprobs=[]))
            self._grow(content)
        for p in parsed.calls:
            if p.id is not None:
                out += self._close()
                out += self._open(call_item(p.id, p.name or "", "", "in_progress"))
            if p.arguments and self.open is not None:
                out.append(self._event("response.function_call_arguments.delta",
                                       delta=p.arguments))
                self.open["arguments"] += p.arguments
        if d.finished:
            if not self.items and self.open is None:  # nothing said: an empty message
                out += self._open(message_item("", "in_progress"))
            out += self._close()
        return out

    def closing(self, usage: UsageInfo, include_usage: bool) -> list[Any]:
        status = self.status(self.last)
        kind = "response.incomplete" if status == "incomplete" else "response.completed"
        return [{"type": kind, "response": self.body(status, self.items, usage)}]

    def stream_error(self, error: Any) -> Any:
        return {"type": "error", "code": error.code, "message": error.message,
                "param": error.param}

    def event(self, payload: Any) -> str:
        payload = {**payload, "sequence_number": self.seq}
        self.seq += 1
        return f"event: {payload['type']}\ndata: {json.dumps(payload)}\n\n"

    def _event(self, kind: str, **fields: Any) -> dict[str, Any]:
        assert self.open is not None
        return {"type": kind, "item_id": self.open["id"], "output_index": len(self.items),
                **fields}

    def _switch_to(self, kind: str, item: dict[str, Any]) -> list[Any]:
        """Events that make an item of `kind` the open one (closing another kind first)."""
        if self.open is not None and self.open["type"] == kind:
            return []
        return self._close() + self._open(item)

    def _open(self, item: dict[str, Any]) -> list[Any]:
        self.open = item
        out = [{"type": "response.output_item.added", "output_index": len(self.items),
                "item": json.loads(json.dumps(item))}]
        part = _part(item)
        if part is not None:
            out.append(self._event("response.content_part.added", content_index=0,
                                   part={**part, "text": ""}))
        return out

    def _grow(self, text: str) -> None:
        assert self.open is not None
        part = _part(self.open)
        assert part is not None
        part["text"] += text

    def _close(self) -> list[Any]:
        """Events that finish the open item (none open: none)."""
        item = self.open
        if item is None:
            return []
        status = self.status(self.last) if self.last is not None else "completed"
        out: list[Any] = []
        part = _part(item)
        if item["type"] == "function_call":
            out.append(self._event("response.function_call_arguments.done",
                                   name=item["name"], arguments=item["arguments"]))
        elif part is not None:
            done = ("response.reasoning_text.done" if item["type"] == "reasoning"
                    else "response.output_text.done")
            extra = {} if item["type"] == "reasoning" else {"logprobs": []}
            out += [self._event(done, content_index=0, text=part["text"], **extra),
                    self._event("response.content_part.done", content_index=0, part=part)]
        if item["type"] != "reasoning":
            item["status"] = status
        out.append({"type": "response.output_item.done", "output_index": len(self.items),
                    "item": item})
        self.items.append(item)
        self.open = None
        return out


def _part(item: dict[str, Any]) -> dict[str, Any] | None:
    return item["content"][0] if item["type"] in ("message", "reasoning") else None


def message_item(text: str, status: str) -> dict[str, Any]:
    return {"type": "message", "id": _id("msg"), "status": status, "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": [],
                         "logprobs": []}]}


def reasoning_item(text: str) -> dict[str, Any]:
    return {"type": "reasoning", "id": _id("rs"), "summary": [],
            "content": [{"type": "reasoning_text", "text": text}]}


def call_item(call_id: str, name: str, arguments: str, status: str) -> dict[str, Any]:
    return {"type": "function_call", "id": _id("fc"), "call_id": call_id, "name": name,
            "arguments": arguments, "status": status}
