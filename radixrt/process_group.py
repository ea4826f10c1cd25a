"""Start the server's processes, wait until each says it is ready, and tear them all down.

Every child is a fresh interpreter running `python -m radixrt.<role>` (the role package's
__main__.py), which reads its ChildSpec -- plain frozen data: the endpoints and the entry
function's arguments -- pickled on stdin, and calls the entry function. Nothing re-imports the
caller's __main__ (as multiprocessing's spawn does), so radixrt.Engine works from a plain
script without `if __name__ == "__main__":`, from `python -c` and from a notebook kernel.

A child reports `ChildReady` (a worker: `WorkerReady`) once it serves, or `ChildFailed` with a
one-line error, so the parent prints one clear line rather than a traceback per process.
Children get SIGKILL when the parent dies (PR_SET_PDEATHSIG) and ignore SIGINT: the parent
decides when everyone stops.
"""

from __future__ import annotations

import atexit
import logging
import os
import pickle
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import zmq

from radixrt.ipc.messages import ChildFailed, ChildReady, ControlMsg
from radixrt.ipc.sockets import Endpoints, PullQueue, PushQueue

logger = logging.getLogger("radixrt")

PACKAGE_DIR = str(Path(__file__).resolve().parent)
# Exit code of a tensor-parallel rank whose peer died under it: a consequence, never the cause
# that a death report should name.
PEER_LOST_EXIT = 3


class StartupError(RuntimeError):
    """A child process could not start; the message is the one line to print."""


@dataclass(frozen=True)
class ChildSpec:
    """What a child process is told on stdin: who it is, where to talk, and its arguments."""

    name: str
    endpoints: Endpoints
    args: tuple[Any, ...]
    parent_pid: int
    package_dir: str  # the radixrt the parent runs; the child must import the same one


def report(endpoints: Endpoints, msg: ControlMsg) -> None:
    """Send a ChildReady (or WorkerReady) once serving, or a ChildFailed, to the parent."""
    # A context of its own: term() returns only once the message is out, which matters for a
    # failing child that exits right after.
    ctx = zmq.Context()
    q = PushQueue(ctx, endpoints.ready, bind=False, hop=ControlMsg)
    q.sock.setsockopt(zmq.LINGER, 5000)
    q.put(msg)
    q.close()
    ctx.term()


def child_main(target: Callable[..., None]) -> None:
    """Entry of every child (radixrt/<role>/__main__.py): read the spec, die with the parent,
    run target(endpoints, name, *args), and report a failure before ready to the parent."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # no half-dead trees on Ctrl-C
    spec: ChildSpec = pickle.load(sys.stdin.buffer)
    die_with_parent(spec.parent_pid)
    try:
        if spec.package_dir != PACKAGE_DIR:
            raise RuntimeError(f"the child imported radixrt from {PACKAGE_DIR}, the parent "
                               f"from {spec.package_dir}")
        target(spec.endpoints, spec.name, *spec.args)
    except Exception as exc:  # noqa: BLE001 - reported to the parent, then exit non-zero
        logger.error("%s failed:\n%s", spec.name, traceback.format_exc())
        try:
            report(spec.endpoints, ChildFailed(spec.name, f"{type(exc).__name__}: {exc}"))
        finally:
            os._exit(1)


def die_with_parent(parent_pid: int) -> None:
    """Linux: get SIGKILL when the parent dies, so a killed server leaves no orphans."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def child_env() -> dict[str, str]:
    """The parent's environment, with its sys.path: a child imports exactly what the parent
    imports (a source checkout, a notebook's sys.path edits), not what its cwd holds."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p or os.getcwd() for p in sys.path)
    env["PYTHONSAFEPATH"] = "1"  # Python >= 3.11: no cwd in front of that path
    return env


class ProcessGroup:
    """The child processes of one server or Engine, and their ready queue.

    `start` launches a child, `wait_ready` blocks until all started children reported ready
    (or raises StartupError with one line), `watch` calls back when one dies, `shutdown`
    stops all (SIGTERM, then SIGKILL) and removes the sockets' directory. A group still
    running at interpreter exit is shut down then.
    """

    def __init__(self, endpoints: Endpoints | None = None) -> None:
        self.endpoints = endpoints or Endpoints.create()
        self.ctx = zmq.Context.instance()
        self._ready_q = PullQueue(self.ctx, self.endpoints.ready, bind=True, hop=ControlMsg)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.ready_info: dict[str, ChildReady] = {}
        self._stopping = False
        self._monitor: threading.Thread | None = None
        _live_groups.add(self)

    def start(self, name: str, role: str, *args: Any) -> None:
        """Run `python -m radixrt.<role>` as child `name`; its entry function gets
        (endpoints, name, *args). args must pickle (frozen configs, plain data)."""
        spec = ChildSpec(name, self.endpoints, args, os.getpid(), PACKAGE_DIR)
        # Its own session: a terminal's Ctrl-C goes to the parent only, which stops everyone.
        proc = subprocess.Popen([sys.executable, "-m", f"radixrt.{role}"],
                                stdin=subprocess.PIPE, env=child_env(), start_new_session=True)
        assert proc.stdin is not None
        try:
            proc.stdin.write(pickle.dumps(spec, protocol=5))
            proc.stdin.close()
        except BrokenPipeError:  # it died at once; wait_ready reports its exit code
            pass
        self.procs[name] = proc

    def wait_ready(self, timeout_s: float = 600.0) -> dict[str, ChildReady]:
        """Block until every started child reported ready; raise StartupError otherwise."""
        deadline = time.monotonic() + timeout_s
        pending = set(self.procs) - set(self.ready_info)
        while pending:
            try:
                msg = self._ready_q.get(timeout_ms=200)
            except TimeoutError:
                dead = sorted(n for n in pending if self.procs[n].poll() is not None)
                if dead:
                    # Its ChildFailed may still be on the way: that line beats an exit code.
                    self._fail(self._next_failure(1000) or (
                        f"{dead[0]} process exited with code {self.procs[dead[0]].returncode} "
                        "before it was ready"))
                if time.monotonic() > deadline:
                    self._fail(f"timed out waiting for {', '.join(sorted(pending))}")
                continue
            if isinstance(msg, ChildFailed):
                self._fail(f"{msg.name} failed to start: {msg.error}")
            self.ready_info[msg.name] = msg
            pending.discard(msg.name)
        return self.ready_info

    def _next_failure(self, timeout_ms: int) -> str | None:
        try:
            msg = self._ready_q.get(timeout_ms=timeout_ms)
        except TimeoutError:
            return None
        if isinstance(msg, ChildFailed):
            return f"{msg.name} failed to start: {msg.error}"
        self.ready_info[msg.name] = msg
        return None

    def _fail(self, line: str) -> NoReturn:
        self.shutdown()
        raise StartupError(line)

    def first_death(self) -> tuple[str, int | None] | None:
        """(name, exit code) of a child that has exited, if any (None while stopping); a rank
        that only followed a dead peer (PEER_LOST_EXIT) is named last."""
        if self._stopping:
            return None
        dead = [(name, p.returncode) for name, p in self.procs.items() if p.poll() is not None]
        dead.sort(key=lambda d: d[1] == PEER_LOST_EXIT)
        return dead[0] if dead else None

    def watch(self, on_death: Callable[[str, int | None], None]) -> None:
        """Call on_death(name, exitcode) from a thread when any child dies unexpectedly."""

        def loop() -> None:
            while not self._stopping:
                if (dead := self.first_death()) is not None:
                    if dead[1] == PEER_LOST_EXIT:
                        time.sleep(0.5)  # the peer that caused it is about to be seen dead
                        dead = self.first_death() or dead
                    on_death(*dead)
                    return
                time.sleep(0.2)

        self._monitor = threading.Thread(target=loop, name="radixrt-watch", daemon=True)
        self._monitor.start()

    def shutdown(self, grace_s: float = 5.0) -> None:
        """Stop every child: SIGTERM, wait, then SIGKILL. Idempotent."""
        self._stopping = True
        for p in self.procs.values():
            if p.poll() is None:
                p.terminate()
        deadline = time.monotonic() + grace_s
        for p in self.procs.values():
            try:
                p.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                try:
                    p.wait(1.0)
                except subprocess.TimeoutExpired:
                    logger.warning("%s did not exit after SIGKILL", p.args)
        self._ready_q.close()
        shutil.rmtree(self.endpoints.directory, ignore_errors=True)
        _live_groups.discard(self)


_live_groups: weakref.WeakSet[ProcessGroup] = weakref.WeakSet()


@atexit.register
def _shutdown_live_groups() -> None:
    """A script that never closed its Engine still leaves no processes or sockets behind."""
    for group in list(_live_groups):
        group.shutdown()
