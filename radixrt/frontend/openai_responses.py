"""OpenAI's Responses API (/v1/responses): the request (frontend/responses_request.py)
becomes a chat completion (same template, sampling, tools, structured output and cache); the
answer takes the Responses shape: output items (reasoning, message, function_call), whole or
as the stream of typed events (response.created ... response.completed).

Nothing is stored (store: false is the only value taken), so previous_response_id and
conversations are refused: a client sends the whole conversation as input items, the
assistant's earlier messages and function calls included, as it does with store: false.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from fastapi.responses import Response

from radixrt.frontend.answers import UsageInfo
from radixrt.frontend.chat_output import ChatOutput
from radixrt.frontend.responses import ResponseShape
from radixrt.frontend.tool_parsers import merge_calls
from radixrt.ipc.messages import TextDelta
from radixrt.sampling_params import SamplingParams

ROUTE = "/v1/responses"


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
        status = self.status(d)
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
