"""Order of the waiting queue: longest prefix match first, FCFS when the queue is long, and
aging so a cold request is not starved by a stream of warm ones."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from radixrt.scheduler.request import Request

# Matching every waiting request each step costs O(queue x prompt); past this length the
# ordering gain is not worth it and we fall back to arrival order.
LPM_MAX_QUEUE = 128


@dataclass(frozen=True)
class SchedulePolicy:
    """Order of the waiting queue (see the module docstring)."""

    kind: str = "lpm"  # lpm | fcfs
    max_wait_s: float = 10.0  # a request waiting this long goes first, in arrival order

    def order(self, waiting: list[Request], prefix_len: Callable[[Request], int],
              now: float | None = None) -> list[Request]:
        now = time.monotonic() if now is None else now
        if self.kind == "fcfs" or len(waiting) > LPM_MAX_QUEUE:
            return sorted(waiting, key=lambda r: r.arrival)
        aged = [r for r in waiting if now - r.arrival >= self.max_wait_s]
        fresh = [r for r in waiting if now - r.arrival < self.max_wait_s]
        aged.sort(key=lambda r: r.arrival)
        fresh.sort(key=lambda r: (-prefix_len(r), r.arrival))
        return aged + fresh
