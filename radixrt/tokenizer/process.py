"""The tokenizer process: prompts in (tokenize, validate), token ids out (detokenize, stop strings).

Sockets: PULL to_tokenizer (from the frontend / Engine) and PULL to_detokenizer (from the
scheduler), both bound here; PUSH to_scheduler and PUSH to_frontend, connected. It blocks in
zmq.Poller while idle: the cores belong to the model worker.

To the frontend go TextDeltaBatches (one per scheduler step, or one refusal) and the
scheduler's answers to stats and flush requests, relayed unchanged.
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
from radixrt.model_info import ModelInfo
from radixrt.process_group import report
from radixrt.sampling_params import InvalidRequestError
from radixrt.tokenizer.detokenize import IncrementalDetokenizer, StopStringMatcher, TokenTexts
from radixrt.tokenizer.tokenize import PromptTokenizer

logger = logging.getLogger("radixrt.tokenizer")

# What a handler hands back: messages for the scheduler, deltas for the frontend.
Outbox = tuple[list[TokenizerSchedulerMsg], list[TextDelta]]


@dataclass
class RequestState:
    """The tokenizer process's view of one running request."""

    detok: IncrementalDetokenizer
    stops: StopStringMatcher
    aborted: bool = False  # the frontend gave up on it: nothing more is sent for it


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

    def handle_tokenize(self, req: TokenizeReq) -> Outbox:
        if req.rid in self.requests:
            return [], [refusal(req.rid, f"request id {req.rid!r} is already running", None)]
        try:
            gen = self.prompts.build(req)
        except InvalidRequestError as exc:
            return [], [refusal(req.rid, str(exc), exc.param)]
        except Exception as exc:  # noqa: BLE001 - e.g. a string where a number belongs
            return [], [refusal(req.rid, f"invalid request: {type(exc).__name__}: {exc}", None)]
        sp = gen.sampling
        self.requests[req.rid] = RequestState(
            detok=IncrementalDetokenizer(self.tokenizer, sp.skip_special_tokens),
            stops=StopStringMatcher(list(sp.stop), sp.include_stop_str_in_output),
        )
        return [gen], []

    def handle_encode(self, req: EncodeReq) -> EncodeDone:
        try:
            return EncodeDone(req.rid, self.prompts.encode(req))
        except InvalidRequestError as exc:
            return EncodeDone(req.rid, error=str(exc), error_param=exc.param)

    def handle_decode(self, req: DecodeReq) -> DecodeDone:
        try:
            return DecodeDone(req.rid, self.prompts.decode(req))
        except InvalidRequestError as exc:
            return DecodeDone(req.rid, error=str(exc), error_param=exc.param)

    def handle_abort(self, req: AbortReq) -> Outbox:
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
            text = state.detok.add(out.new_ids)
            if done:
                text += state.detok.flush()
            text, matched = state.stops.feed(text, final=done)
            if matched is not None:
                # Stop string: finish here and let the scheduler free the request's pages.
                del self.requests[out.rid]
                if out.finish_reason is None:
                    to_scheduler.append(AbortReq(out.rid))
                deltas.append(self._delta(out, text, out.new_ids, finish="stop", matched=matched))
                continue
            if done:
                del self.requests[out.rid]
            deltas.append(self._delta(out, text, out.new_ids, finish=out.finish_reason,
                                      finished=done))
        return to_scheduler, deltas

    def _delta(self, out: TokenOut, text: str, ids: list[int], finish: str | None,
               matched: str | int | None = None, finished: bool = True) -> TextDelta:
        if matched is None and finish == "stop":
            matched = out.matched_stop
        return TextDelta(
            rid=out.rid, text=text, token_ids=list(ids), finished=finished,
            finish_reason=finish, matched_stop=matched, prompt_tokens=out.prompt_tokens,
            completion_tokens=out.completion_tokens, cached_tokens=out.cached_tokens,
            logprobs=self._logprobs(out) if ids else None, error=out.error)

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
    logging.basicConfig(level=log_level.upper(),
                        format=f"[%(asctime)s {name}] %(message)s", datefmt="%H:%M:%S")
    manager = TokenizerManager(info)
    ctx = zmq.Context.instance()
    from_frontend = PullQueue(ctx, endpoints.to_tokenizer, bind=True, hop=FrontendTokenizerMsg)
    from_scheduler = PullQueue(ctx, endpoints.to_detokenizer, bind=True,
                               hop=TokenizerSchedulerMsg)
    to_scheduler = PushQueue(ctx, endpoints.to_scheduler, bind=False, hop=TokenizerSchedulerMsg)
    to_frontend = PushQueue(ctx, endpoints.to_frontend, bind=False, hop=FrontendTokenizerMsg)
    poller = zmq.Poller()
    poller.register(from_scheduler.sock, zmq.POLLIN)
    poller.register(from_frontend.sock, zmq.POLLIN)

    def send(outbox: Outbox) -> None:
        to_sched, deltas = outbox
        for m in to_sched:
            to_scheduler.put(m)
        if deltas:
            to_frontend.put(TextDeltaBatch(deltas))

    handle = Dispatcher(name, {
        # From the frontend.
        TokenizeReq: lambda m: send(manager.handle_tokenize(m)),
        AbortReq: lambda m: send(manager.handle_abort(m)),
        EncodeReq: lambda m: to_frontend.put(manager.handle_encode(m)),
        DecodeReq: lambda m: to_frontend.put(manager.handle_decode(m)),
        StatsReq: to_scheduler.put,
        FlushCacheReq: to_scheduler.put,
        # From the scheduler.
        TokenOutBatch: lambda m: send(manager.handle_token_outs(m)),
        SchedulerStats: to_frontend.put,
        FlushCacheDone: to_frontend.put,
    })
    report(endpoints, ChildReady(name))
    while True:
        events = dict(poller.poll())
        # Scheduler output first: it is what streaming clients are waiting for.
        for queue in (from_scheduler, from_frontend):
            if queue.sock not in events:
                continue
            for msg in queue.drain():
                try:
                    handle(msg)
                except Exception:  # noqa: BLE001 - one bad message must not stop the server
                    logger.exception("tokenizer: failed to handle %s", type(msg).__name__)
