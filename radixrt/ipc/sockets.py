"""ZeroMQ plumbing: typed PUSH/PULL queues over ipc:// endpoints in a per-server temp dir.

Codec: pickle protocol 5. A message whose numpy arrays are all small (a step's batch, its
result: a few hundred bytes) is one in-band pickle, one frame; one with a large array sends
every array as an out-of-band buffer, raw bytes with no copy into the pickle stream. Why the
split: out of band, each array is a ZeroMQ frame of its own, and a decode step's ForwardBatch
has nine small arrays. Pickling costs the same either way, but over the socket one frame beats
ten: a ForwardBatch round trip to an echo process took 433-510 us against 710-721 us
(`python -m bench.bench_ipc`, two runs each, this 2-core VM), on the path of every step. Only the message
dataclasses of radixrt.ipc.messages are sent, and each queue is typed by its hop: it sends
and accepts only subclasses of that hop's base type.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from dataclasses import dataclass
from typing import Any

import numpy as np
import zmq
import zmq.asyncio

OUT_OF_BAND_BYTES = 1 << 16  # a message with an array this large sends its arrays out of band


def encode(obj: Any) -> list[bytes | pickle.PickleBuffer]:
    fields = getattr(obj, "__dict__", {}).values()
    if not any(isinstance(v, np.ndarray) and v.nbytes >= OUT_OF_BAND_BYTES for v in fields):
        return [pickle.dumps(obj, protocol=5)]
    buffers: list[pickle.PickleBuffer] = []
    head = pickle.dumps(obj, protocol=5, buffer_callback=buffers.append)
    return [head, *buffers]


def decode(frames: list[Any]) -> Any:
    return pickle.loads(frames[0], buffers=frames[1:])


class WrongHop(TypeError):
    """A message of another hop was put on (or arrived at) a typed queue."""


def check_hop(msg: Any, hop: type | tuple[type, ...], addr: str) -> Any:
    if not isinstance(msg, hop):
        names = hop.__name__ if isinstance(hop, type) else "/".join(h.__name__ for h in hop)
        raise WrongHop(f"{type(msg).__name__} is not a {names} ({addr})")
    return msg


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
    def to_detokenizer(self) -> str:  # scheduler -> tokenizer process (TokenOutBatch)
        return self._addr("scheduler_out")

    def to_worker(self, rank: int) -> str:
        return self._addr(f"to_worker_{rank}")

    @property
    def from_worker(self) -> str:
        return self._addr("from_worker")

    @property
    def ready(self) -> str:
        return self._addr("ready")


class _Queue:
    """One end of a hop: a ZeroMQ socket that sends or accepts only that hop's messages.
    `bind=True` for the long-lived side that owns the address."""

    kind: int  # zmq.PUSH / zmq.PULL
    hwm_option: int | None = None  # set to 0 (unlimited): a step's message is never dropped

    def __init__(self, ctx: zmq.Context, addr: str, bind: bool, hop: type | tuple[type, ...]
                 ) -> None:
        self.sock = ctx.socket(self.kind)
        self.sock.setsockopt(zmq.LINGER, 0)
        if self.hwm_option is not None:
            self.sock.setsockopt(self.hwm_option, 0)
        (self.sock.bind if bind else self.sock.connect)(addr)
        self.addr, self.hop = addr, hop

    def _encode(self, msg: Any) -> list[bytes | pickle.PickleBuffer]:
        return encode(check_hop(msg, self.hop, self.addr))

    def _decode(self, frames: list[Any]) -> Any:
        return check_hop(decode(frames), self.hop, self.addr)

    def close(self) -> None:
        self.sock.close()


class PushQueue(_Queue):
    """Sending end of a hop (blocking code)."""

    kind, hwm_option = zmq.PUSH, zmq.SNDHWM

    def put(self, msg: Any) -> None:
        self.sock.send_multipart(self._encode(msg), copy=False)


class PullQueue(_Queue):
    """Receiving end of a hop (blocking code)."""

    kind, hwm_option = zmq.PULL, zmq.RCVHWM

    def get(self, timeout_ms: int | None = None) -> Any:
        """Block until a message arrives (or raise TimeoutError after timeout_ms)."""
        if timeout_ms is not None and not self.sock.poll(timeout_ms):
            raise TimeoutError
        return self._decode(self.sock.recv_multipart(copy=False))

    def get_nowait(self) -> Any | None:
        try:
            frames = self.sock.recv_multipart(flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:
            return None
        return self._decode(frames)

    def drain(self) -> list[Any]:
        out = []
        while (msg := self.get_nowait()) is not None:
            out.append(msg)
        return out


class AsyncPushQueue(_Queue):
    """PushQueue for asyncio code (the HTTP frontend)."""

    kind = zmq.PUSH

    def put_nowait(self, msg: Any) -> None:
        """Send without awaiting: zmq.asyncio sends at once while below the high-water mark,
        so this also works from `finally` blocks of cancelled tasks."""
        self.sock.send_multipart(self._encode(msg), copy=False)


class AsyncPullQueue(_Queue):
    """PullQueue for asyncio code (the HTTP frontend)."""

    kind = zmq.PULL

    async def get(self) -> Any:
        return self._decode(await self.sock.recv_multipart(copy=False))
