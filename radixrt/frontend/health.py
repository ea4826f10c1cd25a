"""Is every stage of the pipeline answering? (/health)

A /health call sends a PingReq down the pipeline: the tokenizer process answers it at once and
passes it on, the scheduler answers it too, even in the middle of a step, saying how long the
worker has been on that step. A stage is stuck once a ping it has not answered is older than
`stall_s` (the worker: once one step has run that long). A busy stage answers late but
answers; only silence past `stall_s` counts, so a slow step is never taken for a dead one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from radixrt.ipc.messages import PingReq, Pong

STAGES = ("tokenizer", "scheduler")  # in pipeline order: a stuck one hides those after it
WAIT_S = 1.0  # how long /health waits for fresh answers before judging by what it has


class PipelineHealth:
    def __init__(self, send: Callable[[PingReq], None], stall_s: float) -> None:
        self.send, self.stall_s = send, stall_s
        self.seq = 0
        self.sent: dict[int, float] = {}  # unanswered by some stage: seq -> time sent
        self.answered = dict.fromkeys(STAGES, 0)  # highest seq each stage answered
        self.step_running_s = 0.0  # from the scheduler's latest answer
        self._news = asyncio.Event()

    def on_pong(self, pong: Pong) -> None:
        if pong.seq > self.answered.get(pong.stage, 0):
            self.answered[pong.stage] = pong.seq
        if pong.stage == "scheduler":
            self.step_running_s = pong.step_running_s
        done = min(self.answered.values())
        for seq in [s for s in self.sent if s <= done]:
            del self.sent[seq]
        self._news.set()

    async def check(self) -> tuple[str, str] | None:
        """None when healthy, else (stage, why)."""
        self.seq += 1
        self.sent[self.seq] = time.monotonic()
        self.send(PingReq(self.seq))
        deadline = time.monotonic() + WAIT_S
        while min(self.answered.values()) < self.seq:
            self._news.clear()
            try:
                await asyncio.wait_for(self._news.wait(), max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                break
        return self.stuck()

    def stuck(self) -> tuple[str, str] | None:
        now = time.monotonic()
        for stage in STAGES:
            waiting = [t for s, t in self.sent.items() if s > self.answered[stage]]
            if waiting and now - min(waiting) >= self.stall_s:
                return stage, (f"the {stage} has not answered for {now - min(waiting):.1f} s "
                               f"(limit {self.stall_s:g} s)")
        if self.step_running_s >= self.stall_s:
            return "worker", (f"the worker has been on one step for {self.step_running_s:.1f} "
                              f"s (limit {self.stall_s:g} s)")
        return None
