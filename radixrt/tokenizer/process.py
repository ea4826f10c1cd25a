"""The tokenizer process: prompts in (tokenize, validate), token ids out (detokenize, stop strings).

Sockets: PULL to_tokenizer (from the frontend / Engine) and PULL to_detokenizer (from the
scheduler), both bound here; PUSH to_scheduler and PUSH to_frontend, connected. It blocks in
zmq.Poller while idle: the cores belong to the model worker.

The loop only does what is quick: checks, detokenizing, relaying. Building a request (chat
template, tokenizing) runs on worker threads (tokenizer/workers.py), so a long prompt never
holds up the streams of others; the loop answers pings (/health) at once.

To the frontend go TextDeltaBatches (one per scheduler step, or one refusal) and the
scheduler's answers to stats, flush and ping requests, relayed unchanged.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import zmq

from radixrt.ipc.dispatch import Dispatcher
from radixrt.ipc.messages import (
    AbortReq,
    ChildReady,
    DecodeDone,
    DecodeReq,
    EncodeDone,
    EncodeReq,
    FlushCacheDone,
    FlushCacheReq,
    FrontendTokenizerMsg,
    GenerateReq,
    PingReq,
    Pong,
    PromptLogprobs,
    SchedulerStats,
    StatsReq,
    TextDelta,
    TextDeltaBatch,
    TokenizeReq,
    TokenizerSchedulerMsg,
    TokenLogprob,
    TokenOut,
    TokenOutBatch,
)
from radixrt.ipc.sockets import Endpoints, PullQueue, PushQueue
from radixrt.log import setup_logging
from radixrt.model_info import ModelInfo
from radixrt.process_group import report
from radixrt.sampling_params import InvalidRequestError
from radixrt.tokenizer.detokenize import IncrementalDetokenizer, StopStringMatcher, TokenTexts
from radixrt.tokenizer.tokenize import PromptTokenizer, request_size
from radixrt.tokenizer.workers import LONG_INPUT, Workers, malloc_trim

logger = logging.getLogger("radixrt.tokenizer")

# What a handler hands back: messages for the scheduler, deltas for the frontend.
Outbox = tuple[list[TokenizerSchedulerMsg], list[TextDelta]]


@dataclass
class RequestState:
    """The tokenizer process's view of one running request."""

    detok: IncrementalDetokenizer
    stops: StopStringMatcher
    aborted: bool = False  # the frontend gave up on it: nothing more is sent for it
    echo: str | None = None  # the prompt's text, until the first delta carries it


class TokenizerManager:
    """Socket-free core of the tokenizer process (tests drive it directly).

    Owns the tokenizer and the per-request detokenizer state; every `handle_*` returns an
    Outbox instead of sending, so the process loop is only plumbing.
    """

    def __init__(self, info: ModelInfo, prompts: PromptTokenizer | None = None):
        self.prompts = prompts or PromptTokenizer(info)
        self.tokenizer = self.prompts.tokenizer
        self.texts = TokenTexts(self.tokenizer)  # token strings of logprobs entries
        self.requests: dict[str, RequestState] = {}
        self.building: dict[str, bool] = {}  # rid -> aborted, while its prompt is built

    def handle_tokenize(self, req: TokenizeReq) -> Outbox:
        """admit, build and finish in one go (Engine-free tests; the process splits them)."""
        refused = self.admit(req)
        if refused is not None:
            return refused
        try:
            built: GenerateReq | Exception = self.prompts.build(req)
        except Exception as exc:  # noqa: BLE001 - finish() turns it into a refusal
            built = exc
        return self.finish(req, built)

    def admit(self, req: TokenizeReq) -> Outbox | None:
        """The loop's quick checks before a request is built: a refusal, or None to build it."""
        if req.rid in self.requests or req.rid in self.building:
            return [], [refusal(req.rid, f"request id {req.rid!r} is already running", None)]
        try:
            self.prompts.check_size(req)  # too long to fit: refused by length, untokenized
        except InvalidRequestError as exc:
            return [], [refusal(req.rid, str(exc), exc.param)]
        self.building[req.rid] = False
        return None

    def finish(self, req: TokenizeReq, built: GenerateReq | Exception) -> Outbox:
        """A built request goes to the scheduler (unless aborted meanwhile); an error is the
        request's refusal."""
        if self.building.pop(req.rid, False):
            return [], [TextDelta(req.rid, "", [], finished=True, finish_reason="abort")]
        if isinstance(built, InvalidRequestError):
            return [], [refusal(req.rid, str(built), built.param)]
        if isinstance(built, Exception):  # e.g. a string where a number belongs
            return [], [refusal(req.rid, f"invalid request: {type(built).__name__}: {built}",
                                None)]
        gen = built
        sp = gen.sampling
        echo = None
        if req.echo:  # the prompt as given; ids as their whole text (as /detokenize)
            echo = req.prompt if req.prompt is not None else self.tokenizer.decode(
                gen.input_ids, skip_special_tokens=False)
        self.requests[req.rid] = RequestState(
            detok=IncrementalDetokenizer(self.tokenizer, sp.skip_special_tokens),
            stops=StopStringMatcher(list(sp.stop), sp.include_stop_str_in_output),
            echo=echo,
        )
        return [gen], []

    def handle_encode(self, req: EncodeReq) -> EncodeDone:
        try:
            return EncodeDone(req.rid, self.prompts.encode_request(req))
        except InvalidRequestError as exc:
            return EncodeDone(req.rid, error=str(exc), error_param=exc.param)

    def handle_decode(self, req: DecodeReq) -> DecodeDone:
        try:
            return DecodeDone(req.rid, self.prompts.decode(req))
        except InvalidRequestError as exc:
            return DecodeDone(req.rid, error=str(exc), error_param=exc.param)

    def handle_abort(self, req: AbortReq) -> Outbox:
        if req.rid in self.building:
            self.building[req.rid] = True  # dropped once built
            return [], []
        state = self.requests.get(req.rid)
        if state is None:
            return [], []
        state.aborted = True  # the scheduler's final "abort" entry will clear it
        return [req], []

    def handle_token_outs(self, batch: TokenOutBatch) -> Outbox:
        to_scheduler: list[TokenizerSchedulerMsg] = []
        deltas: list[TextDelta] = []
        for out in batch.outs:
            state = self.requests.get(out.rid)
            if state is None:  # finished here already (stop string): late tokens
                continue
            if state.aborted:
                if out.finish_reason is not None:
                    del self.requests[out.rid]
                    deltas.append(self._delta(out, "", [], finish="abort"))
                continue
            done = out.finish_reason is not None or out.error is not None
            echo, state.echo = state.echo, None  # the prompt's text goes with the first delta
            text = state.detok.add(out.new_ids)
            if done:
                text += state.detok.flush()
            text, matched = state.stops.feed(text, final=done)
            if matched is not None:
                # Stop string: finish here and let the scheduler free the request's pages.
                del self.requests[out.rid]
                if out.finish_reason is None:
                    to_scheduler.append(AbortReq(out.rid))
                deltas.append(self._delta(out, text, out.new_ids, finish="stop", matched=matched,
                                          echo=echo))
                continue
            if done:
                del self.requests[out.rid]
            deltas.append(self._delta(out, text, out.new_ids, finish=out.finish_reason,
                                      finished=done, echo=echo))
        return to_scheduler, deltas

    def _delta(self, out: TokenOut, text: str, ids: list[int], finish: str | None,
               matched: str | int | None = None, finished: bool = True,
               echo: str | None = None) -> TextDelta:
        if matched is None and finish == "stop":
            matched = out.matched_stop
        return TextDelta(
            rid=out.rid, text=text, token_ids=list(ids), finished=finished,
            finish_reason=finish, matched_stop=matched, prompt_tokens=out.prompt_tokens,
            completion_tokens=out.completion_tokens, cached_tokens=out.cached_tokens,
            logprobs=self._logprobs(out) if ids else None, error=out.error, prompt_text=echo,
            prompt_logprobs=None if out.prompt_logprobs is None
            else self._prompt_logprobs(out.prompt_logprobs), embedding=out.embedding)

    def _prompt_logprobs(self, p: PromptLogprobs) -> list[TokenLogprob]:
        t = self.texts
        tops: list[list[tuple[int, float]] | None] = list(p.top) if p.top else []
        tops += [None] * (len(p.logprobs) - len(tops))
        first = TokenLogprob(p.ids[0], t.text_of(p.ids[0]), t.bytes_of(p.ids[0]), None)
        return [first] + [
            TokenLogprob(tid, t.text_of(tid), t.bytes_of(tid), lp, top=None if top is None else
                         [TokenLogprob(i, t.text_of(i), t.bytes_of(i), v) for i, v in top])
            for tid, lp, top in zip(p.ids[1:], p.logprobs, tops, strict=True)]

    def _logprobs(self, out: TokenOut) -> list[TokenLogprob] | None:
        if out.logprobs is None:
            return None
        t = self.texts
        tops = out.top_logprobs or [None] * len(out.new_ids)
        return [
            TokenLogprob(tid, t.text_of(tid), t.bytes_of(tid), lp, top=None if top is None else
                         [TokenLogprob(i, t.text_of(i), t.bytes_of(i), p) for i, p in top])
            for tid, lp, top in zip(out.new_ids, out.logprobs, tops, strict=True)
        ]


def refusal(rid: str, message: str, param: str | None) -> TextDelta:
    return TextDelta(rid, "", [], finished=True, finish_reason=None, error=message,
                     error_param=param)


def run_tokenizer(endpoints: Endpoints, name: str, log_level: str, info: ModelInfo) -> None:
    """Process main (ProcessGroup.start("tokenizer", run_tokenizer, log_level, info))."""
    setup_logging(log_level, name)
    manager = TokenizerManager(info)
    manager.prompts.model_templates.start()  # now, not at the first chat request
    workers: Workers[TokenizeReq, GenerateReq] = Workers(manager.prompts.build)
    ctx = zmq.Context.instance()
    from_frontend = PullQueue(ctx, endpoints.to_tokenizer, bind=True, hop=FrontendTokenizerMsg)
    from_scheduler = PullQueue(ctx, endpoints.to_detokenizer, bind=True,
                               hop=TokenizerSchedulerMsg)
    to_scheduler = PushQueue(ctx, endpoints.to_scheduler, bind=False, hop=TokenizerSchedulerMsg)
    to_frontend = PushQueue(ctx, endpoints.to_frontend, bind=False, hop=FrontendTokenizerMsg)
    poller = zmq.Poller()
    poller.register(from_scheduler.sock, zmq.POLLIN)
    poller.register(from_frontend.sock, zmq.POLLIN)
    poller.register(workers.wake_fd, zmq.POLLIN)

    def send(outbox: Outbox) -> None:
        to_sched, deltas = outbox
        for m in to_sched:
            to_scheduler.put(m)
        if deltas:
            to_frontend.put(TextDeltaBatch(deltas))

    refused_long: list[bool] = []  # a long input was refused on the loop: trim the heap

    def tokenize(req: TokenizeReq) -> None:
        refused = manager.admit(req)
        if refused is not None:
            send(refused)
            if request_size(req) >= LONG_INPUT:
                refused_long.append(True)
        else:
            own = req.chat_template is not None or "chat_template" in (
                req.chat_template_kwargs or {})
            workers.submit(req, request_size(req), own)

    def ping(msg: PingReq) -> None:
        to_frontend.put(Pong("tokenizer", msg.seq))
        to_scheduler.put(msg)

    handle = Dispatcher(name, {
        # From the frontend.
        TokenizeReq: tokenize,
        AbortReq: lambda m: send(manager.handle_abort(m)),
        EncodeReq: lambda m: to_frontend.put(manager.handle_encode(m)),
        DecodeReq: lambda m: to_frontend.put(manager.handle_decode(m)),
        StatsReq: to_scheduler.put,
        FlushCacheReq: to_scheduler.put,
        PingReq: ping,
        # From the scheduler.
        TokenOutBatch: lambda m: send(manager.handle_token_outs(m)),
        SchedulerStats: to_frontend.put,
        FlushCacheDone: to_frontend.put,
        Pong: to_frontend.put,
    })
    report(endpoints, ChildReady(name))
    while True:
        events = dict(poller.poll())
        if workers.wake_fd in events:  # built requests: to the scheduler
            for req, built in workers.completed():
                send(manager.finish(req, built))
        # Scheduler output first: it is what streaming clients are waiting for.
        for queue in (from_scheduler, from_frontend):
            if queue.sock not in events:
                continue
            for msg in queue.drain():
                try:
                    handle(msg)
                except Exception:  # noqa: BLE001 - one bad message must not stop the server
                    logger.exception("tokenizer: failed to handle %s", type(msg).__name__)
            msg = None  # noqa: F841 - let go of the last message before a trim
        if refused_long:  # its message and text are gone now: give the memory back
            refused_long.clear()
            malloc_trim()
