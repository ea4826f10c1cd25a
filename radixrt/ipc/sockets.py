"""ZeroMQ plumbing: typed PUSH/PULL queues over ipc:// endpoints in a per-server temp dir.

Codec: pickle protocol 5 with out-of-band buffers, so numpy arrays travel as raw bytes with no
copy into the pickle stream. Only the message dataclasses of radixrt.ipc.messages are sent.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from dataclasses import dataclass
from typing import Any

import zmq
import zmq.asyncio


def encode(obj: Any) -> list[bytes | pickle.PickleBuffer]:
    buffers: list[pickle.PickleBuffer] = []
    head = pickle.dumps(obj, protocol=5, buffer_callback=buffers.append)
    return [head, *buffers]


def decode(frames: list[Any]) -> Any:
    return pickle.loads(frames[0], buffers=frames[1:])


@dataclass(frozen=True)
class Endpoints:
    """ipc:// addresses of every queue of one server (or Engine) instance."""

    directory: str

    @classmethod
    def create(cls) -> Endpoints:
        return cls(tempfile.mkdtemp(prefix="radixrt-"))

    def _addr(self, name: str) -> str:
        return f"ipc://{os.path.join(self.directory, name)}"

    @property
    def to_tokenizer(self) -> str:
        return self._addr("to_tokenizer")

    @property
    def to_frontend(self) -> str:
        return self._addr("to_frontend")

    @property
    def to_scheduler(self) -> str:
        return self._addr("to_scheduler")

    @property
    def to_detokenizer(self) -> str:  # scheduler -> tokenizer process (TokenOut)
        return self._addr("scheduler_out")

    def to_worker(self, rank: int) -> str:
        return self._addr(f"to_worker_{rank}")

    @property
    def from_worker(self) -> str:
        return self._addr("from_worker")

    @property
    def ready(self) -> str:
        return self._addr("ready")


class PushQueue:
    """Sending end. `bind=True` for the long-lived side that owns the address."""

    def __init__(self, ctx: zmq.Context, addr: str, bind: bool) -> None:
        self.sock = ctx.socket(zmq.PUSH)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDHWM, 0)
        (self.sock.bind if bind else self.sock.connect)(addr)

    def put(self, obj: Any) -> None:
        self.sock.send_multipart(encode(obj), copy=False)

    def close(self) -> None:
        self.sock.close()


class PullQueue:
    def __init__(self, ctx: zmq.Context, addr: str, bind: bool) -> None:
        self.sock = ctx.socket(zmq.PULL)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.RCVHWM, 0)
        (self.sock.bind if bind else self.sock.connect)(addr)

    def get(self, timeout_ms: int | None = None) -> Any:
        """Block until a message arrives (or raise TimeoutError after timeout_ms)."""
        if timeout_ms is not None and not self.sock.poll(timeout_ms):
            raise TimeoutError
        return decode(self.sock.recv_multipart(copy=False))

    def get_nowait(self) -> Any | None:
        try:
            return decode(self.sock.recv_multipart(flags=zmq.NOBLOCK, copy=False))
        except zmq.Again:
            return None

    def drain(self) -> list[Any]:
        out = []
        while (msg := self.get_nowait()) is not None:
            out.append(msg)
        return out

    def close(self) -> None:
        self.sock.close()


class AsyncPushQueue:
    def __init__(self, ctx: zmq.asyncio.Context, addr: str, bind: bool) -> None:
        self.sock = ctx.socket(zmq.PUSH)
        self.sock.setsockopt(zmq.LINGER, 0)
        (self.sock.bind if bind else self.sock.connect)(addr)

    async def put(self, obj: Any) -> None:
        await self.sock.send_multipart(encode(obj), copy=False)

    def close(self) -> None:
        self.sock.close()


class AsyncPullQueue:
    def __init__(self, ctx: zmq.asyncio.Context, addr: str, bind: bool) -> None:
        self.sock = ctx.socket(zmq.PULL)
        self.sock.setsockopt(zmq.LINGER, 0)
        (self.sock.bind if bind else self.sock.connect)(addr)

    async def get(self) -> Any:
        return decode(await self.sock.recv_multipart(copy=False))

    def close(self) -> None:
        self.sock.close()
