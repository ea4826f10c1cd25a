"""Logging of every radixrt process: one line format, and no line repeated without bound.

A flood of clients can make one warning fire thousands of times a second (uvicorn's "Invalid
HTTP request received.", asyncio's accept errors); unchecked, such a flood grew a server's
log by 164 MB in 45 s. RepeatFilter lets each distinct line through a few times per window
and then counts it, saying how many it held back when the line next gets through.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from dataclasses import dataclass

REPEAT_BURST = 5  # copies of one line let through per window
REPEAT_WINDOW_S = 60.0
MAX_TRACKED_LINES = 1024  # distinct lines remembered; more and the table starts over


@dataclass
class _Seen:
    start: float
    count: int = 0
    held_back: int = 0


class RepeatFilter(logging.Filter):
    """Passes each distinct line (logger, level, unformatted message) `burst` times per
    `window_s`; the rest are dropped and counted, and the count is appended to the line's
    next copy that gets through."""

    def __init__(self, burst: int = REPEAT_BURST, window_s: float = REPEAT_WINDOW_S) -> None:
        super().__init__()
        self.burst, self.window_s = burst, window_s
        self._seen: dict[tuple[str, int, str], _Seen] = {}
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno <= logging.DEBUG:  # opt-in (--log-level debug): every step's line
            return True
        key = (record.name, record.levelno, str(record.msg))
        now = time.monotonic()
        with self._lock:
            seen = self._seen.get(key)
            if seen is None or now - seen.start >= self.window_s:
                held_back = seen.held_back if seen is not None else 0
                if len(self._seen) >= MAX_TRACKED_LINES:
                    self._seen.clear()
                self._seen[key] = _Seen(now, 1)
                if held_back:  # digits only: safe inside a %-format string
                    record.msg = f"{record.msg} [{held_back} more like this were not logged]"
                return True
            seen.count += 1
            if seen.count <= self.burst:
                return True
            seen.held_back += 1
            return False


def setup_logging(level: str, name: str) -> None:
    """Log lines as `[time name] message` on stderr, with repeats held back (RepeatFilter)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"[%(asctime)s {name}] %(message)s", "%H:%M:%S"))
    handler.addFilter(RepeatFilter())
    logging.basicConfig(level=level.upper(), handlers=[handler])
