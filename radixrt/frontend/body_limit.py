"""Request bodies are bounded in size and in time before an endpoint reads them whole."""

from __future__ import annotations

import asyncio
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from radixrt.frontend.errors import APIError


def too_large(size: int | None, limit: int) -> APIError:
    what = f"{size} bytes" if size is not None else "more"
    return APIError(413, f"The request body is too large: {what}, the limit is {limit} bytes "
                         "(--max-request-bytes).", code="request_too_large",
                    headers={"Connection": "close"})


class BodyLimitMiddleware:
    """413 when Content-Length says the body is over `max_bytes` (nothing is read), or as
    soon as the bytes received pass it (chunked bodies); 408 when the body has not arrived
    `timeout_s` after the headers. The endpoint sees the limits as an APIError raised by
    `receive`, so its error handler answers."""

    def __init__(self, app: ASGIApp, max_bytes: int, timeout_s: float) -> None:
        self.app, self.max_bytes, self.timeout_s = app, max_bytes, timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await too_large(declared, self.max_bytes).response()(scope, receive, send)
            return
        received = 0
        body_done = False
        deadline = time.monotonic() + self.timeout_s

        async def limited_receive() -> Message:
            nonlocal received, body_done
            if body_done:  # later receives wait for the disconnect: no deadline then
                return await receive()
            try:
                msg = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                raise APIError(408, f"The request body did not arrive within {self.timeout_s:g} "
                                    "s (--body-timeout).", code="request_timeout",
                               headers={"Connection": "close"}) from None
            if msg["type"] == "http.request":
                received += len(msg.get("body", b""))
                if received > self.max_bytes:
                    raise too_large(None, self.max_bytes)
                body_done = not msg.get("more_body", False)
            else:
                body_done = True
            return msg

        await self.app(scope, limited_receive, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
