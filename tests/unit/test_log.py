"""RepeatFilter: a line repeated in a flood is written a few times a window, then counted."""

from __future__ import annotations

import logging

from radixrt.log import RepeatFilter


def record(msg: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord("uvicorn.error", logging.WARNING, __file__, 1, msg, args, None)


def test_repeats_are_held_back_and_counted() -> None:
    f = RepeatFilter(burst=3, window_s=3600)
    passed = [f.filter(record("Invalid HTTP request received.")) for _ in range(1000)]
    assert passed.count(True) == 3 and passed[:3] == [True] * 3
    assert f.filter(record("another line %s", 1))  # other lines are unaffected
    f.window_s = 0  # the window ends: the next copy passes and says how many were dropped
    r = record("Invalid HTTP request received.")
    assert f.filter(r) and "[997 more like this were not logged]" in r.getMessage()


def test_debug_lines_are_never_held_back() -> None:
    """--log-level debug asks for every step's line (the scheduler's per-step log)."""
    f = RepeatFilter(burst=3, window_s=3600)
    lines = [logging.LogRecord("radixrt", logging.DEBUG, __file__, 1, "step %d: ...", (i,), None)
             for i in range(50)]
    assert all(f.filter(r) for r in lines)
