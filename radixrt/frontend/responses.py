"""How each API shapes its answers. The request lifecycle (serving.py) is one path for all of
them; a shape only says what a choice, a stream chunk and a whole response look like."""

from __future__ import annotations

import json
import time
from abc import ABC, abstractmethod
from typing import Any

from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel

from radixrt.frontend.answers import (
    ChatChoice,
    ChatCompletionChunk,
    ChatCompletionResponse,
    ChatLogprobEntry,
    ChatLogprobs,
    ChatResponseMessage,
    ChatStreamChoice,
    CompletionChoice,
    CompletionLogprobs,
    CompletionResponse,
    DeltaMessage,
    TopLogprob,
    UsageInfo,
)
from radixrt.frontend.chat_output import ChatOutput, call_deltas, whole_calls
from radixrt.ipc.messages import TextDelta, TokenLogprob
from radixrt.sampling_params import SamplingParams


def sse(data: str | BaseModel | dict[str, Any]) -> str:
    """One server-sent event."""
    if isinstance(data, BaseModel):
        data = data.model_dump_json()
    elif isinstance(data, dict):
        data = json.dumps(data)
    return f"data: {data}\n\n"


def json_response(model: BaseModel) -> Response:
    # pydantic writes -inf logprobs as null; json.dumps (JSONResponse) would refuse them.
    return Response(model.model_dump_json(), media_type="application/json")


class ResponseShape(ABC):
    """One API call's answer format. `choice` builds a choice from a delta (a stream's delta,
    or a choice's whole merged output); `chunk` wraps streamed choices (or the final usage)."""

    def __init__(self, api_id: str, model: str, sp: SamplingParams) -> None:
        self.api_id, self.model, self.sp = api_id, model, sp
        self.created = int(time.time())

    def opening(self, indices: list[int], usage: UsageInfo) -> list[Any]:
        """Events a stream starts with, before any output (usage: the prompt's so far)."""
        return []

    def stream_events(self, d: TextDelta, index: int) -> list[Any]:
        """The events of one delta of choice `index`."""
        if not self.worth_sending(d):
            return []
        return [self.chunk([self.choice(d, index, stream=True)])]

    def closing(self, usage: UsageInfo, include_usage: bool) -> list[Any]:
        """Events a stream ends with once every choice finished."""
        return ([self.chunk([], usage)] if include_usage else []) + ["[DONE]"]

    def stream_error(self, error: Any) -> Any:
        """The last event of a stream that failed (error: an APIError)."""
        return error.body()

    def event(self, payload: Any) -> str:
        """How an event goes on the wire."""
        return sse(payload)

    def worth_sending(self, d: TextDelta) -> bool:
        """Streams skip deltas that carry nothing for the client (held-back text)."""
        return bool(d.text or d.finished or (self.sp.logprobs and d.token_ids))

    def wants_logprobs(self, d: TextDelta, stream: bool) -> bool:
        """A whole choice always has its logprobs list; a chunk only when it has tokens."""
        return self.sp.logprobs and (bool(d.token_ids) or not stream)

    @abstractmethod
    def choice(self, d: TextDelta, index: int, stream: bool) -> Any: ...

    @abstractmethod
    def chunk(self, choices: list[Any], usage: UsageInfo | None = None) -> Any: ...

    @abstractmethod
    def response(self, choices: list[Any], usage: UsageInfo) -> Response: ...


class ChatShape(ResponseShape):
    """/v1/chat/completions. With a reasoning or tool parser (frontend/chat_output.py), each
    choice's text is split into reasoning_content, content and tool_calls."""

    def __init__(self, api_id: str, model: str, sp: SamplingParams, reasoning: str = "none",
                 tool_parser: str | None = None) -> None:
        super().__init__(api_id, model, sp)
        self.reasoning, self.tool_parser = reasoning, tool_parser
        self.outputs: dict[int, ChatOutput] = {}  # per streamed choice

    @property
    def parsing(self) -> bool:
        return self.reasoning != "none" or self.tool_parser is not None

    def opening(self, indices: list[int], usage: UsageInfo) -> list[Any]:
        return [self.chunk([ChatStreamChoice(index=i, finish_reason=None,
                                             delta=DeltaMessage(role="assistant", content=""))])
                for i in indices]

    def stream_events(self, d: TextDelta, index: int) -> list[Any]:
        if not self.parsing:
            return super().stream_events(d, index)
        out = self.outputs.setdefault(index, ChatOutput(self.reasoning, self.tool_parser))
        reasoning, parsed = out.feed(d.text, d.finished)
        deltas = []
        if reasoning or parsed.content:
            deltas.append(DeltaMessage(reasoning_content=reasoning or None,
                                       content=parsed.content or None))
        deltas += [DeltaMessage(tool_calls=[c]) for c in call_deltas(parsed.calls)]
        logprobs = chat_logprobs(d) if self.wants_logprobs(d, True) else None
        if not deltas and (d.finished or logprobs is not None):
            deltas.append(DeltaMessage())
        choices = [ChatStreamChoice(index=index, delta=m) for m in deltas]
        if choices:  # logprobs with the first chunk, the finish reason with the last
            choices[0].logprobs = logprobs
            choices[-1].finish_reason = out.finish_reason(d.finish_reason)
        return [self.chunk([c]) for c in choices]

    def choice(self, d: TextDelta, index: int, stream: bool) -> Any:
        logprobs = chat_logprobs(d) if self.wants_logprobs(d, stream) else None
        if stream:
            return ChatStreamChoice(index=index, finish_reason=d.finish_reason, logprobs=logprobs,
                                    delta=DeltaMessage(content=d.text or None))
        message, reason = ChatResponseMessage(content=d.text), d.finish_reason
        if self.parsing:
            out = ChatOutput(self.reasoning, self.tool_parser)
            reasoning, parsed = out.feed(d.text, final=True)
            calls = whole_calls(parsed.calls)
            message = ChatResponseMessage(
                content=(parsed.content.strip() or None) if calls else parsed.content,
                reasoning_content=reasoning or None, tool_calls=calls)
            reason = out.finish_reason(reason)
        return ChatChoice(index=index, message=message, logprobs=logprobs, finish_reason=reason)

    def chunk(self, choices: list[Any], usage: UsageInfo | None = None) -> Any:
        return ChatCompletionChunk(id=self.api_id, created=self.created, model=self.model,
                                   choices=choices, usage=usage)

    def response(self, choices: list[Any], usage: UsageInfo) -> Response:
        return json_response(ChatCompletionResponse(
            id=self.api_id, created=self.created, model=self.model, choices=choices,
            usage=usage))


class CompletionShape(ResponseShape):
    """/v1/completions: logprobs carry text offsets, counted per choice across the stream.
    With echo, a choice's text (and its logprobs, when asked) begin with the prompt's."""

    def __init__(self, api_id: str, model: str, sp: SamplingParams, echo: bool = False) -> None:
        super().__init__(api_id, model, sp)
        self.echo = echo
        self.offsets: dict[int, int] = {}

    def worth_sending(self, d: TextDelta) -> bool:
        return super().worth_sending(d) or bool(self.echo and d.prompt_text)

    def choice(self, d: TextDelta, index: int, stream: bool) -> Any:
        text = d.text
        entries = list(d.logprobs or [])
        if self.echo:
            text = (d.prompt_text or "") + text
            entries = list(d.prompt_logprobs or []) + entries
        logprobs = None
        if self.wants_logprobs(d, stream) or (self.sp.logprobs and entries):
            logprobs = completion_logprobs(entries, self.offsets.get(index, 0))
            self.offsets[index] = self.offsets.get(index, 0) + sum(map(len, logprobs.tokens))
        return CompletionChoice(index=index, text=text, finish_reason=d.finish_reason,
                                logprobs=logprobs)

    def chunk(self, choices: list[Any], usage: UsageInfo | None = None) -> Any:
        return CompletionResponse(id=self.api_id, created=self.created, model=self.model,
                                  choices=choices, usage=usage)

    def response(self, choices: list[Any], usage: UsageInfo) -> Response:
        return json_response(self.chunk(choices, usage))


class GenerateShape(ResponseShape):
    """radixrt's native /generate (SGLang's shape): one dict per delta, no usage."""

    def worth_sending(self, d: TextDelta) -> bool:
        return True

    def choice(self, d: TextDelta, index: int, stream: bool) -> Any:
        meta = {
            "id": self.api_id, "prompt_tokens": d.prompt_tokens,
            "completion_tokens": d.completion_tokens, "cached_tokens": d.cached_tokens,
            "finish_reason": d.finish_reason, "matched_stop": d.matched_stop}
        # SGLang's shape: [logprob, token id, token text] per token (the first prompt
        # token's logprob is null).
        if d.logprobs is not None:
            meta["output_token_logprobs"] = [[e.logprob, e.token_id, e.token]
                                             for e in d.logprobs]
        if d.prompt_logprobs is not None:
            meta["input_token_logprobs"] = [[e.logprob, e.token_id, e.token]
                                            for e in d.prompt_logprobs]
        return {"text": d.text, "output_ids": d.token_ids, "meta_info": meta}

    def chunk(self, choices: list[Any], usage: UsageInfo | None = None) -> Any:
        return choices[0]

    def response(self, choices: list[Any], usage: UsageInfo) -> Response:
        return JSONResponse(choices[0])


def chat_logprobs(d: TextDelta) -> ChatLogprobs:
    return ChatLogprobs(content=[
        ChatLogprobEntry(token=e.token, logprob=e.logprob, bytes=e.bytes, top_logprobs=[
            TopLogprob(token=t.token, logprob=t.logprob, bytes=t.bytes) for t in e.top or []])
        for e in d.logprobs or []])


def completion_logprobs(entries: list[TokenLogprob], offset: int) -> CompletionLogprobs:
    out = CompletionLogprobs()
    for e in entries:
        out.tokens.append(e.token)
        out.token_logprobs.append(e.logprob)
        # A prompt's first token has no logprob and no alternatives: null for both.
        out.top_logprobs.append(None if e.logprob is None else
                                {t.token: t.logprob for t in e.top or []})  # type: ignore[misc]
        out.text_offset.append(offset)
        offset += len(e.token)
    return out
