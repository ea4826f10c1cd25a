"""Tokenizing off the tokenizer process's loop.

The loop detokenizes every running stream, so a prompt that takes seconds to tokenize must not
run on it: requests are built on worker threads (the Rust tokenizer releases the GIL while it
works; templates render in a child process) and the results come back through a queue, with
a byte on a pipe that the loop polls next to its sockets. Long inputs get a thread of their
own, so a long-but-legal prompt never queues ahead of a short one, and after each long one the
heap is trimmed so that its memory goes back to the system. Requests that bring their own chat
template get a lane of their own too: a hostile template holds up only its own kind.
"""

from __future__ import annotations

import ctypes
import os
import queue
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Generic, TypeVar

LONG_INPUT = 32_768  # characters (or token ids) from which an input counts as long
SHORT_THREADS = 2

Job = TypeVar("Job")
Result = TypeVar("Result")


def malloc_trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


class Workers(Generic[Job, Result]):
    """Runs fn(job) on threads; `completed()` (on the loop's thread) hands back
    (job, result or exception) pairs once `wake_fd` turned readable."""

    def __init__(self, fn: Callable[[Job], Result], short_threads: int = SHORT_THREADS) -> None:
        self.fn = fn
        self._short = ThreadPoolExecutor(short_threads, thread_name_prefix="tokenize")
        self._long = ThreadPoolExecutor(1, thread_name_prefix="tokenize-long")
        self._template = ThreadPoolExecutor(1, thread_name_prefix="tokenize-template")
        self._done: queue.SimpleQueue[tuple[Job, Result | Exception]] = queue.SimpleQueue()
        self.wake_fd, self._wake_w = os.pipe()
        os.set_blocking(self.wake_fd, False)

    def submit(self, job: Job, size: int, own_template: bool = False) -> None:
        long = size >= LONG_INPUT
        lane = self._template if own_template else self._long if long else self._short
        lane.submit(self._run, job, long)

    def _run(self, job: Job, long: bool) -> None:
        try:
            out: Result | Exception = self.fn(job)
        except Exception as exc:  # noqa: BLE001 - handed to the loop as the job's result
            out = exc
        if long:
            malloc_trim()
        self._done.put((job, out))
        os.write(self._wake_w, b"\0")

    def completed(self) -> list[tuple[Job, Result | Exception]]:
        try:
            while os.read(self.wake_fd, 4096):
                pass
        except BlockingIOError:
            pass
        out = []
        while True:
            try:
                out.append(self._done.get_nowait())
            except queue.Empty:
                return out

    def close(self) -> None:
        self._short.shutdown(wait=False, cancel_futures=True)
        self._long.shutdown(wait=False, cancel_futures=True)
        self._template.shutdown(wait=False, cancel_futures=True)
        os.close(self.wake_fd)
        os.close(self._wake_w)
