"""Chat templates render in a child process with bounds on time, output and memory.

A chat template is Jinja code: `{{ 'a ' * 5000000 }}` or nested `range(100000)` loops are
enough to stall a process for good. transformers renders templates in Jinja's
ImmutableSandboxedEnvironment, which stops attribute tricks but not loops or big strings, so
here every render (the model's template and, separately, templates that requests bring) runs
in a child interpreter through transformers' own `render_jinja_template` (the same sandboxed
environment and template variables as `apply_chat_template`), with

- a time bound: SIGALRM interrupts the render after `timeout_s`; a child that does not answer
  `KILL_GRACE_S` later (stuck in one C call) is killed and replaced;
- an output bound: Jinja's output joiner counts characters and stops past `max_chars`;
- a memory bound: RLIMIT_AS caps the child's address space, so one huge string is a
  MemoryError there, not gigabytes here.

The caller blocks (a tokenizer worker thread, never the process's loop) and gets the text or
an InvalidRequestError.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from radixrt.process_group import child_env, die_with_parent
from radixrt.sampling_params import InvalidRequestError

logger = logging.getLogger("radixrt.tokenizer")

RENDER_TIMEOUT_S = 2.0
KILL_GRACE_S = 1.0
START_TIMEOUT_S = 120.0
MEMORY_BUDGET_BYTES = 512 * 1024 * 1024  # address space the child may add to its start-up size


@dataclass
class RenderJob:
    """Everything apply_chat_template(tokenize=False) would pass to the template."""

    messages: list[dict]
    template: str
    max_chars: int  # longer output is refused (TooLong)
    add_generation_prompt: bool = True
    continue_final_message: bool | str = False
    tools: list[dict] | None = None
    documents: list[dict] | None = None
    variables: dict[str, Any] = field(default_factory=dict)  # special tokens, kwargs


class RenderedTooLong(InvalidRequestError):
    """The template's output passed max_chars."""


class TemplateSandbox:
    """One renderer child process, used by one caller at a time (a lock), started on first
    use and replaced when it had to be killed."""

    def __init__(self, name: str, timeout_s: float = RENDER_TIMEOUT_S) -> None:
        self.name, self.timeout_s = name, timeout_s
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._conn: Connection | None = None
        self._ready = False
        self.restarts = 0

    def start(self) -> None:
        """Launch the child now (it loads while the caller goes on)."""
        with self._lock:
            if self._proc is None:
                self._spawn()

    def render(self, job: RenderJob, param: str = "messages") -> str:
        """The rendered text; InvalidRequestError (naming `param`) when the template fails
        or passes a bound."""
        with self._lock:
            try:
                self._ensure_started()
                assert self._conn is not None
                self._conn.send((self.timeout_s, job))
                answered = self._conn.poll(self.timeout_s + KILL_GRACE_S)
                reply = self._conn.recv() if answered else None
            except (EOFError, OSError) as exc:
                self._stop()
                raise InvalidRequestError(f"chat template: the renderer failed ({exc!r})",
                                          param) from None
            if reply is None:
                self._stop()
                raise InvalidRequestError(f"chat template: rendering took longer than "
                                          f"{self.timeout_s:g} s", param)
        kind, value = reply
        if kind == "ok":
            return value
        if kind == "too_long":
            raise RenderedTooLong(f"the chat template's output is longer than {job.max_chars} "
                                  "characters", param)
        raise InvalidRequestError(f"chat template failed: {value}", param)

    def close(self) -> None:
        with self._lock:
            self._stop()

    def _ensure_started(self) -> None:
        if self._proc is None or self._proc.poll() is not None:
            self._stop()
            self._spawn()
        if not self._ready:
            assert self._conn is not None
            if not self._conn.poll(START_TIMEOUT_S):
                self._stop()
                raise RuntimeError(f"the {self.name} template renderer did not start")
            self._conn.recv()  # "ready"
            self._ready = True

    def _spawn(self) -> None:
        parent, child = socket.socketpair()
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "radixrt.tokenizer.template_sandbox", str(child.fileno())],
            pass_fds=[child.fileno()], stdin=subprocess.DEVNULL, env=child_env())
        child.close()
        self._conn = Connection(parent.detach())
        self._ready = False

    def _stop(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._proc is not None:
            if self._proc.poll() is None:
                self.restarts += 1
                self._proc.kill()
            self._proc.wait()
            self._proc = None


# ------------------------------------------------------------------ the child process


class _Timeout(Exception):
    pass


class _TooLong(Exception):
    pass


_max_chars = 0  # of the render in progress


def _bounded_concat(pieces: Any) -> str:
    """Jinja's output joiner ("".join), stopping once the output passes _max_chars."""
    out: list[str] = []
    n = 0
    for piece in pieces:
        n += len(piece)
        if n > _max_chars:
            raise _TooLong
        out.append(piece)
    return "".join(out)


def _alarm(signum: int, frame: object) -> None:
    raise _Timeout


def _render(timeout_s: float, job: RenderJob) -> tuple[str, str]:
    from transformers.utils.chat_template_utils import render_jinja_template

    global _max_chars
    _max_chars = job.max_chars
    signal.setitimer(signal.ITIMER_REAL, timeout_s)
    try:
        rendered, _ = render_jinja_template(
            conversations=[job.messages], tools=job.tools, documents=job.documents,
            chat_template=job.template, add_generation_prompt=job.add_generation_prompt,
            continue_final_message=job.continue_final_message, **job.variables)
        return "ok", rendered[0]
    except _Timeout:
        return "error", f"rendering took longer than {timeout_s:g} s"
    except _TooLong:
        return "too_long", ""
    except MemoryError:
        return "error", f"rendering needed more than {MEMORY_BUDGET_BYTES >> 20} MiB"
    except Exception as exc:  # noqa: BLE001 - a template's own error is the request's answer
        return "error", f"{type(exc).__name__}: {exc}"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def _limit_memory() -> None:
    import resource

    with open("/proc/self/statm") as f:
        size = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    soft = size + MEMORY_BUDGET_BYTES
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def child_main(fd: int) -> None:
    die_with_parent(os.getppid())
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    conn = Connection(fd)
    import jinja2
    from transformers.utils.chat_template_utils import render_jinja_template  # noqa: F401

    # This process renders templates and nothing else: every environment gets the bound.
    jinja2.Environment.concat = staticmethod(_bounded_concat)  # type: ignore[assignment]
    signal.signal(signal.SIGALRM, _alarm)
    _limit_memory()
    conn.send("ready")
    while True:
        try:
            timeout_s, job = conn.recv()
        except (EOFError, OSError):  # the tokenizer process is gone
            return
        try:
            reply = _render(timeout_s, job)
        except _Timeout:  # the alarm fired just as the render ended
            reply = "error", f"rendering took longer than {timeout_s:g} s"
        conn.send(reply)


if __name__ == "__main__":
    child_main(int(sys.argv[1]))
