"""Forwarding one request to one replica.

An Exchange sends the request and reads the replica's answer in a task of its own, handing the
head (status, headers) and then the raw body chunks over a small queue (which also passes the
client's pace back to the replica). Waiting on the queue, the router can watch for the client
going away; cancelling the task then closes the upstream connection, and the replica aborts a
generation whose client disconnected.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass

import httpx
from fastapi.responses import JSONResponse

# Per-connection headers (RFC 9110 7.6.1) and those the proxy sets itself.
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
                        "te", "trailer", "transfer-encoding", "upgrade", "host",
                        "content-length", "accept-encoding"})


@dataclass(frozen=True)
class Head:
    status: int
    headers: list[tuple[str, str]]

    @property
    def is_sse(self) -> bool:
        ctype = next((v for k, v in self.headers if k.lower() == "content-type"), "")
        return ctype.startswith("text/event-stream")


@dataclass(frozen=True)
class Failure:
    message: str
    kind: str  # connect | disconnect
    # True when the request never reached the replica, so another one may take it.
    retryable: bool = False


_END = object()


class Exchange:
    def __init__(self, client: httpx.AsyncClient, request: httpx.Request) -> None:
        self.client, self.request = client, request
        self.queue: asyncio.Queue[object] = asyncio.Queue(maxsize=64)
        self.task = asyncio.ensure_future(self._pump())
        self.task.add_done_callback(self._done)

    async def _pump(self) -> None:
        try:
            resp = await self.client.send(self.request, stream=True)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            await self.queue.put(Failure(_describe(exc), "connect", retryable=True))
            return
        except httpx.HTTPError as exc:
            await self.queue.put(Failure(_describe(exc), "disconnect"))
            return
        try:
            await self.queue.put(Head(resp.status_code, resp.headers.multi_items()))
            async for chunk in resp.aiter_raw():
                await self.queue.put(chunk)
            await self.queue.put(_END)
        except httpx.HTTPError as exc:
            await self.queue.put(Failure(_describe(exc), "disconnect"))
        finally:
            await resp.aclose()

    def _done(self, task: asyncio.Task[None]) -> None:
        # A bug in the pump must not leave the reader waiting forever.
        if not task.cancelled() and (exc := task.exception()) is not None:
            while not self.queue.empty():
                self.queue.get_nowait()
            self.queue.put_nowait(Failure(f"router error: {_describe(exc)}", "disconnect"))

    def close(self) -> None:
        """Stop reading (the client went away, or the answer was passed on)."""
        if not self.task.done():
            self.task.cancel()  # its finally closes the upstream connection

    async def head(self) -> Head | Failure:
        item = await self.queue.get()
        assert isinstance(item, (Head, Failure))
        return item

    async def body(self) -> AsyncIterator[bytes | Failure]:
        """The body's chunks; a Failure last if the replica failed before the end."""
        while (item := await self.queue.get()) is not _END:
            assert isinstance(item, (bytes, Failure))
            yield item
            if isinstance(item, Failure):
                return


def keepalive_options() -> list[tuple[int, int, int]]:
    """TCP keepalive on upstream connections: a replica host that vanished without closing
    them (power, network) fails the requests on it in ~25 s instead of never."""
    opts = [(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)]
    for name, value in (("TCP_KEEPIDLE", 10), ("TCP_KEEPINTVL", 5), ("TCP_KEEPCNT", 3)):
        if hasattr(socket, name):  # Linux; elsewhere the system defaults apply
            opts.append((socket.IPPROTO_TCP, getattr(socket, name), value))
    return opts


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# uvicorn sets these on the router's own answers.
RESPONSE_OWN = frozenset({"date", "server"})


def forward_headers(headers: Iterable[tuple[str, str]],
                    drop: frozenset[str] = frozenset()) -> list[tuple[str, str]]:
    return [(k, v) for k, v in headers if k.lower() not in HOP_BY_HOP and k.lower() not in drop]


def error_body(message: str, type: str, code: str) -> dict[str, object]:
    return {"error": {"message": message, "type": type, "param": None, "code": code}}


def error_response(status: int, message: str, type: str = "server_error",
                   code: str = "replica_failed",
                   headers: dict[str, str] | None = None) -> JSONResponse:
    """An OpenAI-style error answered by the router itself."""
    return JSONResponse(error_body(message, type, code), status_code=status, headers=headers)


def sse_error(message: str) -> bytes:
    """A stream's last event when its replica failed mid-answer (clients raise on it)."""
    return f"data: {json.dumps(error_body(message, 'server_error', 'replica_failed'))}\n\n".encode()


class SSEFramer:
    """Pass whole server-sent events on as they arrive; keep a partial one back.

    Chunk boundaries of the upstream connection can fall inside an event; if the replica then
    dies, the client must see the error event, not half an event glued to it.
    """

    def __init__(self) -> None:
        self.pending = b""

    def feed(self, chunk: bytes) -> bytes:
        data = self.pending + chunk
        end = max(data.rfind(b"\n\n"), data.rfind(b"\r\n\r\n"))
        if end < 0:
            self.pending = data
            return b""
        cut = end + (4 if data.startswith(b"\r\n\r\n", end) else 2)
        self.pending = data[cut:]
        return data[:cut]
