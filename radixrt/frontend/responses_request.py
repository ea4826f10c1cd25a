"""The Responses API's request (/v1/responses): its input items, tools and text format,
and the same request as a chat completion (frontend/openai_responses.py answers it).

Nothing is stored, so a client sends the whole conversation as input items: messages, the
assistant's earlier function calls and reasoning, and the calls' outputs.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, TypeAdapter, ValidationError

from radixrt.frontend.fields import OPENAI_DEFAULT_VALUES, OPENAI_UNSUPPORTED, _Request
from radixrt.frontend.protocol import ChatCompletionRequest, validation_error
from radixrt.sampling_params import InvalidRequestError


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
