"""Connection-level limits uvicorn lacks: a deadline for request headers, and a cap on open
connections that closes the longest idle one instead of running out of file descriptors.

uvicorn 0.54 bounds idle keep-alive time (`timeout_keep_alive`) but starts that clock only
after a response: a client that connects and never finishes its headers holds its socket
forever, and about 20,000 of them exhaust the process's descriptors, after which nothing,
/health included, is served. Its `limit_concurrency` answers 503 to *new* requests once that
many connections are open, so idle connections would lock real clients out. Here:

- every connection must deliver complete request headers within `header_timeout_s` of
  connecting (or of the first byte after a keep-alive pause), else it is closed;
- at most `max_connections` are open; one more closes the connection that has been idle
  (no request in progress) the longest, or, when all are busy, is refused with a 503.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from radixrt.config import HTTPLimits

logger = logging.getLogger("radixrt.frontend")

FD_RESERVE = 256  # descriptors kept for everything but client connections (sockets, files)
_BUSY = (b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nConnection: close\r\n"
         b"Content-Length: 0\r\n\r\n")


def raise_open_file_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; return the soft limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft == resource.RLIM_INFINITY or soft >= target:
        return soft if soft != resource.RLIM_INFINITY else target
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    except (ValueError, OSError):
        return soft


def connection_cap(limits: HTTPLimits, open_file_limit: int) -> int:
    """The connections allowed: the configured cap, kept under the open-file limit."""
    return max(16, min(limits.max_connections, open_file_limit - FD_RESERVE))


class ConnectionTable:
    """The open connections of one server, the idle ones in the order they went idle."""

    def __init__(self, max_connections: int, header_timeout_s: float) -> None:
        self.max_connections = max_connections
        self.header_timeout_s = header_timeout_s
        self.open: set[GuardedH11Protocol] = set()
        self.idle: dict[GuardedH11Protocol, None] = {}  # insertion order = idle since
        self.closed_for_room = 0  # idle connections closed to make room
        self.refused = 0  # connections refused: every open one was busy
        self.header_timeouts = 0

    def admit(self, conn: GuardedH11Protocol) -> bool:
        """Room for one more (closing the longest idle connection if need be)?"""
        if len(self.open) >= self.max_connections:
            if not self.idle:
                self.refused += 1
                return False
            oldest = next(iter(self.idle))
            self.closed_for_room += 1
            oldest.drop()
        self.open.add(conn)
        self.idle[conn] = None
        return True

    def busy(self, conn: GuardedH11Protocol) -> None:
        self.idle.pop(conn, None)

    def went_idle(self, conn: GuardedH11Protocol) -> None:
        self.idle.pop(conn, None)
        self.idle[conn] = None

    def gone(self, conn: GuardedH11Protocol) -> None:
        self.open.discard(conn)
        self.idle.pop(conn, None)


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a header deadline and a place in a ConnectionTable."""

    table: ConnectionTable  # set on the subclass that guarded_protocol() makes

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None
        self._admitted = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if not self.table.admit(self):
            transport.write(_BUSY)
            self.drop()
            return
        self._admitted = True
        self._arm_header_timer()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.transport.is_closing():
            return
        if self.conn.their_state is h11.IDLE:  # the next request's headers are incomplete
            self._arm_header_timer()
        else:
            self._disarm_header_timer()
            self.table.busy(self)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._admitted and not self.transport.is_closing() and (
                self.conn.their_state is h11.IDLE):
            self.table.went_idle(self)  # uvicorn's keep-alive timer runs from here

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_timer()
        self.table.gone(self)
        super().connection_lost(exc)

    def drop(self) -> None:
        """Close now (no response is in progress)."""
        self._disarm_header_timer()
        self.table.gone(self)
        if not self.transport.is_closing():
            self.transport.close()

    def _arm_header_timer(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.table.header_timeout_s,
                                                      self._header_timeout)

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout(self) -> None:
        self._header_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.table.header_timeouts += 1
            logger.debug("closing a connection that sent no complete request headers in %g s",
                         self.table.header_timeout_s)
            self.drop()


def guarded_protocol(limits: HTTPLimits, open_file_limit: int) -> type[GuardedH11Protocol]:
    """A protocol class for uvicorn.Config(http=...), with its own ConnectionTable."""
    table = ConnectionTable(connection_cap(limits, open_file_limit), limits.header_timeout_s)
    return type("GuardedH11", (GuardedH11Protocol,), {"table": table})
