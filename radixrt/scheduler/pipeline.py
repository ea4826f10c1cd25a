"""The step pipeline: when a step's result is taken back relative to the next launch.

Without overlap each step is scheduled, sent and its result processed before the next one is
scheduled. With overlap (SGLang's overlap scheduler is the model) step N+1 is scheduled and
sent while the worker still runs step N, and N's result is processed after that: the
scheduler's own time and the IPC hide behind the worker's forward. The Scheduler keeps the
request state consistent with steps in flight (pending tokens, see scheduler.py); this class
only orders the calls and measures what stays exposed. Used by the scheduler process (over
ZeroMQ, to one or more worker ranks) and by radixrt/testing's LocalEngine (in process).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from radixrt.ipc.messages import ForwardBatch, StepResult, TokenOutBatch
from radixrt.scheduler.scheduler import Scheduler


class StepPipeline:
    """One `step()` per loop turn: schedule, send, and take back the oldest result when
    the pipeline is full (one step in flight with overlap, none without) or nothing new ran."""

    def __init__(self, sched: Scheduler, overlap: bool, send: Callable[[ForwardBatch], None],
                 receive: Callable[[], StepResult]) -> None:
        self.sched, self.overlap = sched, overlap
        self.send, self.receive = send, receive
        self._busy = False  # the worker had a step in the previous turn
        self._continued: dict[int, bool] = {}  # step -> sent right behind another step

    def step(self) -> TokenOutBatch:
        s = self.sched
        if s.steps_in_flight and any(r.grammar is not None and r.num_pending for r in s.running):
            # A constrained request's next mask needs the token still in flight: take that
            # result back first (this turn runs like the simple loop).
            self._busy = False
            return s.process_result(self.receive())
        batch = s.schedule()
        t_send = time.perf_counter()
        if batch is not None:
            self._continued[batch.step] = self._busy
            self.send(batch)
        depth = 1 if self.overlap and batch is not None else 0
        if s.steps_in_flight <= depth:
            self._busy = batch is not None
            return s.collect_outputs()
        result = self.receive()
        st = s.stats
        if not self.overlap:
            st.ipc_seconds += time.perf_counter() - t_send - result.forward_seconds
        if self._continued.pop(result.step, False):
            # The worker waited for this step although the scheduler had work: exposed.
            st.exposed_seconds += result.idle_seconds
            st.exposed_steps += 1
        self._busy = True
        return s.process_result(result)
