"""The tokenizer process: prompts in (tokenize, validate), token ids out (detokenize, stop strings).

Sockets: PULL to_tokenizer (from the frontend / Engine) and PULL to_detokenizer (from the
scheduler), both bound here; PUSH to_scheduler and PUSH to_frontend, connected. It blocks in
zmq.Poller while idle: the cores belong to the model worker.

Everything sent to the frontend is either a list[TextDelta] (one message per scheduler step,
or one refusal), a SchedulerStats or a FlushCacheReq (answers, forwarded unchanged).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import zmq

from radixrt.ipc.messages import (
    AbortReq,
    FlushCacheReq,
    SchedulerStats,
    StatsReq,
    TextDelta,
    TokenizeReq,
    TokenOut,
)
from radixrt.ipc.sockets import Endpoints, PullQueue, PushQueue
from radixrt.model_info import ModelInfo
from radixrt.process_group import report_ready
from radixrt.sampling_params import InvalidRequestError
from radixrt.tokenizer.detokenize import IncrementalDetokenizer, StopStringMatcher
from radixrt.tokenizer.tokenize import PromptTokenizer

logger = logging.getLogger("radixrt.tokenizer")


@dataclass
class RequestState:
    detok: IncrementalDetokenizer
    stops: StopStringMatcher
    aborted: bool = False  # the frontend gave up on it: nothing more is sent for it


class TokenizerManager:
    """Socket-free core of the process, so that tests can drive it directly.

    `handle_*` return the messages to send: (to the scheduler, to the frontend).
    """

    def __init__(self, info: ModelInfo, prompts: PromptTokenizer | None = None):
        self.prompts = prompts or PromptTokenizer(info)
        self.tokenizer = self.prompts.tokenizer
        self.requests: dict[str, RequestState] = {}

    def handle_tokenize(self, req: TokenizeReq) -> tuple[list[object], list[object]]:
        if req.rid in self.requests:
            return [], [[refusal(req.rid, f"request id {req.rid!r} is already running", None)]]
        try:
            gen = self.prompts.build(req)
        except InvalidRequestError as exc:
            return [], [[refusal(req.rid, str(exc), exc.param)]]
        except Exception as exc:  # noqa: BLE001 - e.g. a string where a number belongs
            return [], [[refusal(req.rid, f"invalid request: {type(exc).__name__}: {exc}", None)]]
        sp = gen.sampling
        self.requests[req.rid] = RequestState(
            detok=IncrementalDetokenizer(self.tokenizer, sp.skip_special_tokens),
            stops=StopStringMatcher(list(sp.stop)),
        )
        return [gen], []

    def handle_abort(self, req: AbortReq) -> list[object]:
        state = self.requests.get(req.rid)
        if state is None:
            return []
        state.aborted = True  # the scheduler's final "abort" entry will clear it
        return [req]

    def handle_token_out(self, out: TokenOut) -> tuple[list[object], list[TextDelta]]:
        to_scheduler: list[object] = []
        deltas: list[TextDelta] = []
        for i, rid in enumerate(out.rids):
            state = self.requests.get(rid)
            if state is None:  # finished here already (stop string): late tokens
                continue
            finish = out.finish_reasons[i]
            error = out.errors[i] if i < len(out.errors) else None
            if state.aborted:
                if finish is not None:
                    del self.requests[rid]
                    deltas.append(self._delta(out, i, "", [], finished=True, finish="abort"))
                continue
            new_ids = out.new_ids[i]
            done = finish is not None or error is not None
            text = state.detok.add(new_ids)
            if done:
                text += state.detok.flush()
            text, matched = state.stops.feed(text, final=done)
            if matched is not None:
                # Stop string: finish here and let the scheduler free the request's pages.
                del self.requests[rid]
                if finish is None:
                    to_scheduler.append(AbortReq(rid))
                deltas.append(
                    self._delta(out, i, text, new_ids, finished=True, finish="stop",
                                matched=matched)
                )
                continue
            if done:
                del self.requests[rid]
            delta = self._delta(out, i, text, new_ids, finished=done, finish=finish)
            delta.error = error
            deltas.append(delta)
        return to_scheduler, deltas

    @staticmethod
    def _delta(out: TokenOut, i: int, text: str, ids: list[int], finished: bool,
               finish: str | None, matched: str | int | None = None) -> TextDelta:
        if matched is None and finish == "stop":
            matched = out.matched_stops[i]
        return TextDelta(
            rid=out.rids[i],
            text=text,
            token_ids=list(ids),
            finished=finished,
            finish_reason=finish,
            matched_stop=matched,
            prompt_tokens=out.prompt_tokens[i],
            completion_tokens=out.completion_tokens[i],
            cached_tokens=out.cached_tokens[i],
            logprobs=out.logprobs[i] if ids else None,
            top_logprobs=out.top_logprobs[i] if ids else None,
        )


def refusal(rid: str, message: str, param: str | None) -> TextDelta:
    return TextDelta(rid, "", [], finished=True, finish_reason=None, error=message,
                     error_param=param)


def run_tokenizer(endpoints: Endpoints, name: str, log_level: str, info: ModelInfo) -> None:
    """Process main (ProcessGroup.start("tokenizer", run_tokenizer, log_level, info))."""
    logging.basicConfig(level=log_level.upper(),
                        format=f"[%(asctime)s {name}] %(message)s", datefmt="%H:%M:%S")
    manager = TokenizerManager(info)
    ctx = zmq.Context.instance()
    from_frontend = PullQueue(ctx, endpoints.to_tokenizer, bind=True)
    from_scheduler = PullQueue(ctx, endpoints.to_detokenizer, bind=True)
    to_scheduler = PushQueue(ctx, endpoints.to_scheduler, bind=False)
    to_frontend = PushQueue(ctx, endpoints.to_frontend, bind=False)
    poller = zmq.Poller()
    poller.register(from_scheduler.sock, zmq.POLLIN)
    poller.register(from_frontend.sock, zmq.POLLIN)
    report_ready(endpoints, name)

    def send(sched_msgs: list[object], front_msgs: list[object]) -> None:
        for m in sched_msgs:
            to_scheduler.put(m)
        for m in front_msgs:
            to_frontend.put(m)

    def handle(msg: object, from_client: bool) -> None:
        if isinstance(msg, TokenOut):
            sched_msgs, deltas = manager.handle_token_out(msg)
            send(sched_msgs, [deltas] if deltas else [])
        elif isinstance(msg, TokenizeReq):
            send(*manager.handle_tokenize(msg))
        elif isinstance(msg, AbortReq):
            send(manager.handle_abort(msg), [])
        elif isinstance(msg, (StatsReq, FlushCacheReq)) and from_client:
            to_scheduler.put(msg)
        elif isinstance(msg, (SchedulerStats, FlushCacheReq)):
            to_frontend.put(msg)  # the scheduler's answers
        else:
            logger.warning("unexpected message %r", type(msg).__name__)

    while True:
        events = dict(poller.poll())
        # Scheduler output first: it is what streaming clients are waiting for.
        for queue, from_client in ((from_scheduler, False), (from_frontend, True)):
            if queue.sock not in events:
                continue
            for msg in queue.drain():
                try:
                    handle(msg, from_client)
                except Exception:  # noqa: BLE001 - one bad message must not stop the server
                    logger.exception("tokenizer: failed to handle %s", type(msg).__name__)
