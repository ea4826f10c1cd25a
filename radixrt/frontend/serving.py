"""Request handling behind the HTTP routes: API requests become TokenizeReqs (one per choice),
TextDeltas become OpenAI responses, whole or streamed as server-sent events."""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import Request
from fastapi.responses import Response, StreamingResponse

from radixrt.config import ServerConfig
from radixrt.frontend.answers import PromptTokensDetails, UsageInfo
from radixrt.frontend.anthropic import MessagesRequest, MessagesShape
from radixrt.frontend.auth import tenant_of
from radixrt.frontend.client import AsyncTokenizerClient, merge_deltas
from radixrt.frontend.embeddings import EMBED_SAMPLING, EmbeddingRequest, EmbeddingShape
from radixrt.frontend.errors import APIError
from radixrt.frontend.metrics import Metrics, RequestTimer
from radixrt.frontend.openai_responses import ResponsesShape
from radixrt.frontend.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    GenerateRequest,
    check_sampling,
    parse_request,
)
from radixrt.frontend.responses import ChatShape, CompletionShape, GenerateShape, ResponseShape
from radixrt.frontend.responses_request import ResponsesRequest
from radixrt.frontend.tools import (
    NO_TOOLS,
    ToolPlan,
    ToolSupport,
    plan_tools,
    read_chat_template,
    tool_messages,
)
from radixrt.ipc.messages import TextDelta, TokenizeReq
from radixrt.model_info import ModelInfo
from radixrt.sampling_params import SamplingParams

DISCONNECTED = "disconnected"  # queue sentinels, next to TextDeltas
SHUTDOWN = "shutdown"


@dataclass
class Generation:
    """The sub-requests (choices) of one API call; their deltas share one queue."""

    rids: list[str]
    per_prompt: int  # n: choice i belongs to prompt i // n
    queue: asyncio.Queue[TextDelta | str] = field(default_factory=asyncio.Queue)
    timers: dict[str, RequestTimer] = field(default_factory=dict)
    last: dict[str, TextDelta] = field(default_factory=dict)  # counts are cumulative
    buffered: list[TextDelta] = field(default_factory=list)  # read before the response began
    closed: bool = False

    def index(self, rid: str) -> int:
        return int(rid.rsplit("-", 1)[1])

    @property
    def unfinished(self) -> list[str]:
        return [r for r in self.rids if not (r in self.last and self.last[r].finished)]

    def usage(self) -> UsageInfo:
        """Prompt tokens once per prompt (its choices share the prompt's KV); outputs summed."""
        prompt = cached = completion = 0
        for p in range(0, len(self.rids), self.per_prompt):
            finals = [self.last[r] for r in self.rids[p:p + self.per_prompt] if r in self.last]
            if finals:
                prompt += finals[0].prompt_tokens
                cached += max(d.cached_tokens for d in finals)
                completion += sum(d.completion_tokens for d in finals)
        return UsageInfo(prompt_tokens=prompt, completion_tokens=completion,
                         total_tokens=prompt + completion,
                         prompt_tokens_details=PromptTokensDetails(cached_tokens=cached))


class OpenAIServing:
    """The HTTP request lifecycle, the same for every endpoint: parse and check, submit one
    TokenizeReq per choice (admission control: --max-queued-requests), wait for the first
    answers (a refusal becomes a 4xx), then answer whole or stream, aborting what still runs
    when the client leaves or the server shuts down. Endpoints differ only in their
    ResponseShape (frontend/responses.py)."""

    def __init__(self, config: ServerConfig, info: ModelInfo, metrics: Metrics) -> None:
        self.config, self.info, self.metrics = config, info, metrics
        engine = config.engine
        self.served_name = engine.served_model_name
        self.model_names = {engine.served_model_name, Path(engine.model_path).name}
        self.tool_support = ToolSupport.detect(read_chat_template(engine.model_path),
                                               config.tool_call_parser, config.reasoning_parser)
        self.client: AsyncTokenizerClient | None = None
        self._live: dict[int, Generation] = {}
        self.in_flight = 0  # sub-requests
        self.draining = False  # no new requests; those in flight finish
        self.shutting_down = False  # requests still in flight are aborted

    # ------------------------------------------------------------ lifecycle

    def check_model(self, name: str | None) -> str:
        if name is not None and name not in self.model_names:
            raise APIError(404, f"The model `{name}` does not exist.", param="model",
                           code="model_not_found")
        return self.served_name

    async def drain(self, timeout_s: float) -> int:
        """Stop accepting requests, let those in flight finish for up to timeout_s, then
        abort the rest; returns how many sub-requests were aborted."""
        self.draining = True
        deadline = time.monotonic() + timeout_s
        while self.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        left = self.in_flight
        self.abort_all()
        return left

    def abort_all(self) -> None:
        """Shutdown: stop accepting, finish every open request now (as aborted)."""
        self.draining = self.shutting_down = True
        assert self.client is not None
        for gen in list(self._live.values()):
            for rid in gen.unfinished:
                self.client.abort(rid)  # the scheduler frees them; no more deltas come
            gen.queue.put_nowait(SHUTDOWN)

    def _sampling(self, body: ChatCompletionRequest | CompletionRequest) -> SamplingParams:
        sp = body.to_sampling_params(self.info.sampling_defaults)
        check_sampling(sp, self.info.vocab_size, self.info.context_length)
        return sp

    @staticmethod
    def _choice_sampling(sp: SamplingParams, i: int) -> SamplingParams:
        # With a seed, choice i uses seed + i: n identical samples would be useless.
        seed = None if sp.seed is None else sp.seed + i
        return dataclasses.replace(sp, n=1, seed=seed)

    # ------------------------------------------------------------ running sub-requests

    async def _start(self, reqs: list[TokenizeReq], request: Request,
                     per_prompt: int, input_param: str = "prompt") -> Generation:
        """Submit; return once every choice answered once (a refusal becomes a 4xx here)."""
        limit = self.config.engine.max_queued_requests
        if self.draining:
            raise APIError(503, "The server is shutting down.", "service_unavailable",
                           headers={"Retry-After": "5"})
        if len(reqs) > limit:  # never fits, however idle the server: not worth a retry
            raise APIError(400, f"This request makes {len(reqs)} sub-requests (prompts x n), "
                           f"more than this server takes at once ({limit}, "
                           "--max-queued-requests).", param="n" if per_prompt > 1 else input_param,
                           code="too_many_sub_requests")
        if self.in_flight + len(reqs) > limit:
            raise APIError(503, f"The server is overloaded ({self.in_flight} requests in "
                           f"flight, limit {limit}); retry later.", "server_overloaded",
                           code="server_overloaded", headers={"Retry-After": "1"})
        assert self.client is not None
        tenant = tenant_of(request)
        if tenant is not None:  # --api-key-file: every key has its own cache namespace
            for r in reqs:
                r.cache_salt = tenant if r.cache_salt is None else f"{tenant}/{r.cache_salt}"
        gen = Generation([r.rid for r in reqs], per_prompt)
        for r in reqs:
            self.client.submit(r, gen.queue)
            gen.timers[r.rid] = RequestTimer(self.metrics)
        self.in_flight += len(reqs)
        self.metrics.in_flight.set(self.in_flight)
        self._live[id(gen)] = gen
        watcher = asyncio.create_task(self._watch_disconnect(request, gen))
        try:
            waiting = set(gen.rids)
            while waiting:
                d = await self._next(gen)
                if d is None:
                    raise APIError(499, "the client disconnected")
                gen.buffered.append(d)
                waiting.discard(d.rid)
                if d.error is not None:
                    raise APIError(400, d.error, param=d.error_param)
        except BaseException:
            self._close(gen)
            raise
        finally:
            watcher.cancel()
        return gen

    async def _watch_disconnect(self, request: Request, gen: Generation) -> None:
        while True:
            msg = await request.receive()
            if msg["type"] == "http.disconnect":
                gen.queue.put_nowait(DISCONNECTED)
                return

    async def _next(self, gen: Generation) -> TextDelta | None:
        """The next delta, or None when the client left; on shutdown, aborts for the rest."""
        item = await gen.queue.get()
        if item == DISCONNECTED:
            return None
        if item == SHUTDOWN:
            for rid in gen.unfinished:
                gen.queue.put_nowait(TextDelta(rid, "", [], finished=True, finish_reason="abort"))
            return await self._next(gen)
        assert isinstance(item, TextDelta)
        gen.timers[item.rid].on_delta(item)
        gen.last[item.rid] = item
        return item

    async def _deltas(self, gen: Generation) -> AsyncIterator[TextDelta]:
        """Buffered deltas, then live ones until every choice finished."""
        for d in gen.buffered:
            yield d
        gen.buffered = []
        while gen.unfinished:
            d = await self._next(gen)
            if d is None:
                return
            yield d

    async def _collect(self, gen: Generation, request: Request) -> dict[str, TextDelta] | None:
        """Whole outputs per rid; None if the client went away."""
        watcher = asyncio.create_task(self._watch_disconnect(request, gen))
        got: dict[str, list[TextDelta]] = {r: [] for r in gen.rids}
        try:
            async for d in self._deltas(gen):
                got[d.rid].append(d)
            if gen.unfinished:
                return None
        finally:
            watcher.cancel()
            self._close(gen)
        out = {r: merge_deltas(ds) for r, ds in got.items()}
        for d in out.values():
            if d.error is not None:
                raise APIError(400, d.error, param=d.error_param)
            if d.finish_reason == "abort" and self.shutting_down:
                raise APIError(503, "The server is shutting down.", "service_unavailable")
        return out

    def _close(self, gen: Generation) -> None:
        """Free the generation; abort choices still running (client gone, error, shutdown)."""
        if gen.closed:
            return
        gen.closed = True
        assert self.client is not None
        unfinished = set(gen.unfinished)
        for rid in gen.rids:
            if rid in unfinished:
                self.client.abort(rid)
            else:
                self.client.release(rid)
        self.in_flight -= len(gen.rids)
        self.metrics.in_flight.set(self.in_flight)
        self._live.pop(id(gen), None)

    # ------------------------------------------------------------ one response path

    async def _respond(self, request: Request, reqs: list[TokenizeReq], per_prompt: int,
                       shape: ResponseShape, stream: bool, include_usage: bool = False,
                       input_param: str = "prompt") -> Response:
        """Run the sub-requests and answer in `shape`: whole, or streamed as server-sent
        events (a refusal before any output is an HTTP error either way)."""
        gen = await self._start(reqs, request, per_prompt, input_param)
        if stream:
            return self._stream(gen, self._chunks(gen, shape, include_usage))
        outs = await self._collect(gen, request)
        if outs is None:
            return Response(status_code=499)
        choices = [shape.choice(d, gen.index(rid), stream=False) for rid, d in outs.items()]
        return shape.response(choices, gen.usage())

    async def _chunks(self, gen: Generation, shape: ResponseShape, include_usage: bool
                      ) -> AsyncIterator[str]:
        for c in shape.opening([gen.index(r) for r in gen.rids], gen.usage()):
            yield shape.event(c)
        async for d in self._deltas(gen):
            if d.error is not None:
                err = APIError(500, d.error, "internal_error", d.error_param)
                yield shape.event(shape.stream_error(err))
                return
            for c in shape.stream_events(d, gen.index(d.rid)):
                yield shape.event(c)
        for c in shape.closing(gen.usage(), include_usage):
            yield shape.event(c)

    def _stream(self, gen: Generation, chunks: AsyncIterator[str]) -> StreamingResponse:
        async def body() -> AsyncIterator[str]:
            try:
                async for c in chunks:
                    yield c
            finally:  # also when the client disconnected: abort what still runs
                self._close(gen)

        return StreamingResponse(body(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})

    # ------------------------------------------------------------ the endpoints

    def _tool_sampling(self, body: ChatCompletionRequest) -> tuple[ToolPlan, SamplingParams]:
        """The request's tool plan, and its sampling under the plan's grammar if any."""
        plan = plan_tools(body.tools, body.tool_choice, body.parallel_tool_calls,
                          self.tool_support)
        sp = self._sampling(body)
        if plan.has_grammar:
            if sp.regex is None and sp.json_schema is None:
                sp = dataclasses.replace(sp, regex=plan.regex, json_schema=plan.json_schema)
            elif plan.forced:  # under auto, the request's own grammar wins
                raise APIError(400, "tool_choice required or a named function cannot be "
                               "combined with response_format, regex or json_schema",
                               param="tool_choice")
        return plan, sp

    async def chat(self, request: Request) -> Response:
        body = parse_request(ChatCompletionRequest, await request.body())
        model = self.check_model(body.model)
        plan, sp = self._tool_sampling(body)
        shape = ChatShape(f"chatcmpl-{uuid.uuid4().hex}", model, sp,
                          reasoning=self.tool_support.reasoning, tool_parser=plan.parser)
        return await self._chat(request, body, shape, plan)

    async def messages(self, request: Request) -> Response:
        """Anthropic's Messages API: a chat completion in Anthropic's shape."""
        body = parse_request(MessagesRequest, await request.body())
        chat = body.to_chat()
        model = self.check_model(body.model)
        plan, sp = self._tool_sampling(chat)
        shape = MessagesShape(f"msg_{uuid.uuid4().hex}", model, sp, tool_parser=plan.parser)
        return await self._chat(request, chat, shape, plan)

    async def embeddings(self, request: Request) -> Response:
        """OpenAI's embeddings API: one prefill-only sub-request per input."""
        body = parse_request(EmbeddingRequest, await request.body())
        model = self.check_model(body.model)
        body.check_dimensions(self.info.hidden_size)
        shape = EmbeddingShape(f"embd-{uuid.uuid4().hex}", model, body)
        reqs = []
        for i, item in enumerate(body.inputs()):
            text, ids = (item, None) if isinstance(item, str) else (None, item)
            reqs.append(TokenizeReq(rid=f"{shape.api_id}-{i}", prompt=text, input_ids=ids,
                                    sampling=EMBED_SAMPLING, embed=True))
        return await self._respond(request, reqs, 1, shape, stream=False, input_param="input")

    async def responses(self, request: Request) -> Response:
        """OpenAI's Responses API: a chat completion in the Responses shape."""
        body = parse_request(ResponsesRequest, await request.body())
        chat = body.to_chat()
        model = self.check_model(body.model)
        plan, sp = self._tool_sampling(chat)
        shape = ResponsesShape(f"resp_{uuid.uuid4().hex}", model, sp, body.echoed(),
                               reasoning=self.tool_support.reasoning, tool_parser=plan.parser)
        return await self._chat(request, chat, shape, plan)

    async def _chat(self, request: Request, body: ChatCompletionRequest,
                    shape: ResponseShape, plan: ToolPlan = NO_TOOLS) -> Response:
        self._check_template(body)
        messages = tool_messages([m.to_dict(i) for i, m in enumerate(body.messages)], plan,
                                 self.tool_support)
        kwargs = body.chat_template_kwargs
        if plan.template_tools is not None:
            kwargs = {"tools": plan.template_tools, **(kwargs or {})}
        add_generation_prompt = body.generation_prompt()
        reqs = [TokenizeReq(rid=f"{shape.api_id}-{i}", messages=messages,
                            sampling=self._choice_sampling(shape.sp, i), stream=body.stream,
                            cache_salt=body.cache_salt,
                            chat_template_kwargs=kwargs,
                            add_generation_prompt=add_generation_prompt,
                            continue_final_message=body.continue_final_message,
                            chat_template=body.chat_template)
                for i in range(body.n)]
        return await self._respond(request, reqs, body.n, shape, body.stream, body.include_usage)

    def _check_template(self, body: ChatCompletionRequest) -> None:
        """A template a request brings is code run on the server: only when trusted."""
        if body.chat_template is not None:
            param = "chat_template"
        elif "chat_template" in (body.chat_template_kwargs or {}):
            param = "chat_template_kwargs"
        else:
            return
        if not self.config.trust_request_chat_template:
            raise APIError(400, f"{param}: this server does not accept chat templates in "
                           "requests (start it with --trust-request-chat-template)",
                           param=param, code="chat_template_not_allowed")

    async def completions(self, request: Request) -> Response:
        body = parse_request(CompletionRequest, await request.body())
        shape = CompletionShape(f"cmpl-{uuid.uuid4().hex}", self.check_model(body.model),
                                self._sampling(body), echo=body.echo)
        reqs = []
        for p, prompt in enumerate(body.prompts()):
            text, ids = (prompt, None) if isinstance(prompt, str) else (None, prompt)
            for i in range(body.n):
                reqs.append(TokenizeReq(rid=f"{shape.api_id}-{p * body.n + i}", prompt=text,
                                        input_ids=ids, sampling=self._choice_sampling(shape.sp, i),
                                        stream=body.stream, cache_salt=body.cache_salt,
                                        echo=body.echo))
        return await self._respond(request, reqs, body.n, shape, body.stream, body.include_usage)

    async def generate(self, request: Request) -> Response:
        """radixrt's native endpoint: one prompt, SamplingParams as they are."""
        body = parse_request(GenerateRequest, await request.body())
        if (body.text is None) == (body.input_ids is None):
            raise APIError(400, "give exactly one of text, input_ids", param="text")
        sp = body.to_sampling_params(self.info.sampling_defaults)
        check_sampling(sp, self.info.vocab_size, self.info.context_length)
        rid = f"gen-{uuid.uuid4().hex}-0"
        req = TokenizeReq(rid=rid, prompt=body.text, input_ids=body.input_ids, sampling=sp,
                          stream=body.stream, cache_salt=body.cache_salt)
        return await self._respond(request, [req], 1, GenerateShape(rid, self.served_name, sp),
                                   body.stream)
