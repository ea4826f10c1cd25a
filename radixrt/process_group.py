"""Start the server's processes, wait until each says it is ready, and tear them all down.

Every child is a `spawn`ed multiprocessing.Process whose target takes
(endpoints, name) plus extra args, and calls `report_ready(endpoints, ChildReady(name))` (a
worker: a WorkerReady) once it serves. A child that fails before that reports the error instead (`report_failure`), so the
parent prints one clear line rather than a traceback per process.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import shutil
import signal
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

import zmq

from radixrt.ipc.messages import ChildFailed, ChildReady, ControlMsg
from radixrt.ipc.sockets import Endpoints, PullQueue, PushQueue

logger = logging.getLogger("radixrt")


class StartupError(RuntimeError):
    pass


def report(endpoints: Endpoints, msg: ControlMsg) -> None:
    """Send a ChildReady (or WorkerReady) once serving, or a ChildFailed, to the parent."""
    q = PushQueue(zmq.Context.instance(), endpoints.ready, bind=False, hop=ControlMsg)
    q.sock.setsockopt(zmq.LINGER, 5000)  # deliver it even if the child exits right after
    q.put(msg)
    q.close()


def child_main(target: Callable[..., None], endpoints: Endpoints, name: str, *args: Any) -> None:
    """Entry point of every child: die with the parent, report failures before ready."""
    # Children ignore SIGINT: the parent decides when everyone stops (no half-dead trees).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent()
    try:
        target(endpoints, name, *args)
    except Exception as exc:  # noqa: BLE001 - reported to the parent, then exit non-zero
        logger.error("%s failed:\n%s", name, traceback.format_exc())
        try:
            report(endpoints, ChildFailed(name, f"{type(exc).__name__}: {exc}"))
        finally:
            os._exit(1)


def _die_with_parent() -> None:
    """Linux: get SIGKILL when the parent dies, so a killed server leaves no orphans."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass


class ProcessGroup:
    def __init__(self, endpoints: Endpoints | None = None) -> None:
        self.endpoints = endpoints or Endpoints.create()
        self.ctx = zmq.Context.instance()
        self._ready_q = PullQueue(self.ctx, self.endpoints.ready, bind=True, hop=ControlMsg)
        self._mp = mp.get_context("spawn")
        self.procs: dict[str, mp.process.BaseProcess] = {}
        self.ready_info: dict[str, ChildReady] = {}
        self._stopping = False
        self._monitor: threading.Thread | None = None

    def start(self, name: str, target: Callable[..., None], *args: Any) -> None:
        p = self._mp.Process(
            target=child_main, args=(target, self.endpoints, name, *args), name=name, daemon=True
        )
        p.start()
        self.procs[name] = p

    def wait_ready(self, timeout_s: float = 600.0) -> dict[str, ChildReady]:
        """Block until every started child reported ready; raise StartupError otherwise."""
        deadline = time.monotonic() + timeout_s
        pending = set(self.procs) - set(self.ready_info)
        while pending:
            try:
                msg = self._ready_q.get(timeout_ms=200)
            except TimeoutError:
                for name in pending:
                    if not self.procs[name].is_alive():
                        self.shutdown()
                        raise StartupError(
                            f"{name} process exited with code {self.procs[name].exitcode} "
                            "before it was ready"
                        ) from None
                if time.monotonic() > deadline:
                    self.shutdown()
                    raise StartupError(
                        f"timed out waiting for {', '.join(sorted(pending))}") from None
                continue
            if isinstance(msg, ChildFailed):
                self.shutdown()
                raise StartupError(f"{msg.name} failed to start: {msg.error}")
            self.ready_info[msg.name] = msg
            pending.discard(msg.name)
        return self.ready_info

    def watch(self, on_death: Callable[[str, int | None], None]) -> None:
        """Call on_death(name, exitcode) from a thread when any child dies unexpectedly."""

        def loop() -> None:
            while not self._stopping:
                for name, p in self.procs.items():
                    if not p.is_alive() and not self._stopping:
                        on_death(name, p.exitcode)
                        return
                time.sleep(0.2)

        self._monitor = threading.Thread(target=loop, name="radixrt-watch", daemon=True)
        self._monitor.start()

    def shutdown(self, grace_s: float = 5.0) -> None:
        """Stop every child: SIGTERM, wait, then SIGKILL. Idempotent."""
        self._stopping = True
        for p in self.procs.values():
            if p.is_alive():
                p.terminate()
        deadline = time.monotonic() + grace_s
        for p in self.procs.values():
            p.join(max(0.0, deadline - time.monotonic()))
            if p.is_alive():
                p.kill()
                p.join(1.0)
        self._ready_q.close()
        shutil.rmtree(self.endpoints.directory, ignore_errors=True)
