"""Process checks for tests that must leave no orphans (Linux /proc)."""

from __future__ import annotations

import os
import time
from pathlib import Path


def alive(pid: int) -> bool:
    """Whether pid runs (a zombie, waiting for its parent to reap it, does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_gone(pids: list[int], timeout_s: float) -> list[int]:
    """Wait until none of pids runs; return those still running after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while (running := [p for p in pids if alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.1)
    return running


def children_of(parent: int) -> list[int]:
    """Running direct children of a process."""
    return [int(p) for p in os.listdir("/proc") if p.isdigit() and alive(int(p))
            and f"PPid:\t{parent}\n" in _status(p)]


def _status(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return ""
