"""Clients of the tokenizer process: asyncio (HTTP frontend) and blocking (offline Engine).

Both PUSH to `to_tokenizer` and bind a PULL on `to_frontend`. The tokenizer process sends back
a TextDeltaBatch per scheduler step and answers StatsReq / FlushCacheReq with a SchedulerStats /
FlushCacheDone, in order. Each client routes what it receives through one dispatch table.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import zmq
import zmq.asyncio

from radixrt.ipc.dispatch import Dispatcher
from radixrt.ipc.messages import (
    AbortReq,
    DecodeDone,
    DecodeReq,
    EncodeDone,
    EncodeReq,
    FlushCacheDone,
    FlushCacheReq,
    FrontendTokenizerMsg,
    PingReq,
    Pong,
    SchedulerStats,
    StatsReq,
    TextDelta,
    TextDeltaBatch,
    TokenizeReq,
    TokenLogprob,
)
from radixrt.ipc.sockets import AsyncPullQueue, AsyncPushQueue, Endpoints, PullQueue, PushQueue

logger = logging.getLogger("radixrt.frontend")


def merge_deltas(deltas: list[TextDelta]) -> TextDelta:
    """One TextDelta holding a request's whole output (the last delta's final fields)."""
    last = deltas[-1]
    logprobs: list[TokenLogprob] | None = None
    for d in deltas:
        if d.logprobs is not None:
            logprobs = (logprobs or []) + d.logprobs
    return TextDelta(
        rid=last.rid,
        text="".join(d.text for d in deltas),
        token_ids=[t for d in deltas for t in d.token_ids],
        finished=last.finished,
        finish_reason=last.finish_reason,
        matched_stop=last.matched_stop,
        prompt_tokens=last.prompt_tokens,
        completion_tokens=last.completion_tokens,
        cached_tokens=last.cached_tokens,
        logprobs=logprobs,
        error=last.error,
        error_param=last.error_param,
        prompt_text=deltas[0].prompt_text,
        prompt_logprobs=deltas[0].prompt_logprobs,
        embedding=next((d.embedding for d in deltas if d.embedding is not None), None),
    )


class AsyncTokenizerClient:
    """Used by the frontend: per-request asyncio queues fed by one dispatcher task."""

    def __init__(self, endpoints: Endpoints) -> None:
        self.ctx = zmq.asyncio.Context()
        self._push = AsyncPushQueue(self.ctx, endpoints.to_tokenizer, bind=False,
                                    hop=FrontendTokenizerMsg)
        self._pull = AsyncPullQueue(self.ctx, endpoints.to_frontend, bind=True,
                                    hop=FrontendTokenizerMsg)
        self.queues: dict[str, asyncio.Queue[Any]] = {}
        self._waiters: dict[type, deque[asyncio.Future[Any]]] = {
            SchedulerStats: deque(),
            FlushCacheDone: deque(),
        }
        self._calls: dict[str, asyncio.Future[Any]] = {}  # EncodeReq / DecodeReq by rid
        self._route = Dispatcher("frontend", {
            TextDeltaBatch: self._deliver,
            SchedulerStats: self._answer,
            FlushCacheDone: self._answer,
            EncodeDone: self._reply,
            DecodeDone: self._reply,
            Pong: lambda m: self.on_pong(m) if self.on_pong is not None else None,
        })
        self.on_pong: Callable[[Pong], None] | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._dispatch())

    async def _dispatch(self) -> None:
        while True:
            msg = await self._pull.get()
            try:
                self._route(msg)
            except Exception:  # noqa: BLE001 - the dispatcher must outlive any one message
                logger.exception("frontend: failed to route %s", type(msg).__name__)

    def _deliver(self, batch: TextDeltaBatch) -> None:
        for d in batch.deltas:
            q = self.queues.get(d.rid)
            if q is not None:  # else: the handler is gone (client left, aborted)
                q.put_nowait(d)

    def _answer(self, msg: SchedulerStats | FlushCacheDone) -> None:
        waiters = self._waiters[type(msg)]
        while waiters:
            fut = waiters.popleft()
            if not fut.done():  # skip callers that timed out
                fut.set_result(msg)
                break

    def _reply(self, msg: EncodeDone | DecodeDone) -> None:
        fut = self._calls.pop(msg.rid, None)
        if fut is not None and not fut.done():  # else: the caller timed out
            fut.set_result(msg)

    async def call(self, req: EncodeReq | DecodeReq, timeout_s: float = 30.0) -> Any:
        """Send an EncodeReq / DecodeReq; its EncodeDone / DecodeDone (TimeoutError)."""
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._calls[req.rid] = fut
        self._send(req)
        try:
            return await asyncio.wait_for(fut, timeout_s)
        finally:
            self._calls.pop(req.rid, None)

    def _send(self, msg: FrontendTokenizerMsg) -> None:
        # Not awaited: aborts must go out from `finally` blocks of cancelled tasks too (a
        # client that disconnected).
        self._push.put_nowait(msg)

    def submit(self, req: TokenizeReq,
               queue: asyncio.Queue[Any] | None = None) -> asyncio.Queue[Any]:
        """Send the request; its deltas go to `queue` (which several requests may share)."""
        q: asyncio.Queue[Any] = queue if queue is not None else asyncio.Queue()
        self.queues[req.rid] = q
        self._send(req)
        return q

    def release(self, rid: str) -> None:
        self.queues.pop(rid, None)

    def abort(self, rid: str) -> None:
        self.release(rid)
        self._send(AbortReq(rid))

    async def _ask(self, req: object, answer: type, timeout_s: float) -> Any:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiters[answer].append(fut)
        self._send(req)
        return await asyncio.wait_for(fut, timeout_s)

    async def stats(self, timeout_s: float = 5.0) -> SchedulerStats:
        return await self._ask(StatsReq(), SchedulerStats, timeout_s)

    async def flush_cache(self, timeout_s: float = 10.0) -> FlushCacheDone:
        """Flush now: what running requests hold stays (the answer says so)."""
        return await self._ask(FlushCacheReq(wait_for_idle=False), FlushCacheDone, timeout_s)

    def ping(self, msg: PingReq) -> None:
        self._send(msg)

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self._push.close()
        self._pull.close()
        self.ctx.term()


class TokenizerClient:
    """Blocking client for radixrt.Engine. Not thread-safe: one caller at a time.

    `check`, if given, is called every CHECK_S while waiting; it raises to stop the wait (the
    Engine's: a process of the server died, so no answer will come)."""

    CHECK_S = 0.5

    def __init__(self, endpoints: Endpoints, check: Callable[[], None] | None = None) -> None:
        self._check = check
        ctx = zmq.Context.instance()
        self._push = PushQueue(ctx, endpoints.to_tokenizer, bind=False, hop=FrontendTokenizerMsg)
        self._pull = PullQueue(ctx, endpoints.to_frontend, bind=True, hop=FrontendTokenizerMsg)
        self._deltas: deque[TextDelta] = deque()  # received, not yet handed out
        self._answers: deque[object] = deque()
        self._file = Dispatcher("engine", {
            TextDeltaBatch: lambda m: self._deltas.extend(m.deltas),
            SchedulerStats: self._answers.append,
            FlushCacheDone: self._answers.append,
        })

    def submit(self, req: TokenizeReq) -> None:
        self._push.put(req)

    def abort(self, rid: str) -> None:
        self._push.put(AbortReq(rid))

    def _receive(self, timeout_s: float | None) -> None:
        """Wait for one message and file it (raise TimeoutError)."""
        if self._check is None:
            self._file(self._pull.get(None if timeout_s is None else int(timeout_s * 1000)))
            return
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            left = self.CHECK_S if deadline is None else min(self.CHECK_S,
                                                             deadline - time.monotonic())
            try:
                self._file(self._pull.get(max(0, int(left * 1000))))
                return
            except TimeoutError:
                self._check()
                if deadline is not None and time.monotonic() >= deadline:
                    raise

    def iter_deltas(self, rids: Iterable[str] | None = None,
                    timeout_s: float | None = None) -> Iterator[TextDelta]:
        """Yield deltas as they arrive: of `rids` until all of them finished, or all (forever).

        Deltas of other requests are kept for a later call. timeout_s bounds each wait.
        """
        wanted = set(rids) if rids is not None else None
        held: list[TextDelta] = []
        try:
            while wanted is None or wanted:
                if not self._deltas:
                    self._receive(timeout_s)
                    continue
                d = self._deltas.popleft()
                if wanted is not None and d.rid not in wanted:
                    held.append(d)
                    continue
                if d.finished and wanted is not None:
                    wanted.discard(d.rid)
                yield d
        finally:
            self._deltas.extendleft(reversed(held))

    def wait(self, rids: Iterable[str], timeout_s: float | None = None) -> dict[str, TextDelta]:
        """Block until every rid finished; return each one's merged output."""
        rids = list(rids)
        got: dict[str, list[TextDelta]] = {r: [] for r in rids}
        for d in self.iter_deltas(rids, timeout_s):
            got[d.rid].append(d)
        return {r: merge_deltas(ds) for r, ds in got.items()}

    def _ask(self, req: object, answer: type, timeout_s: float) -> Any:
        self._push.put(req)
        while True:
            for i, msg in enumerate(self._answers):
                if isinstance(msg, answer):
                    del self._answers[i]
                    return msg
            self._receive(timeout_s)

    def stats(self, timeout_s: float = 10.0) -> SchedulerStats:
        return self._ask(StatsReq(), SchedulerStats, timeout_s)

    def flush_cache(self, timeout_s: float = 60.0) -> FlushCacheDone:
        return self._ask(FlushCacheReq(), FlushCacheDone, timeout_s)

    def close(self) -> None:
        self._push.close()
        self._pull.close()
