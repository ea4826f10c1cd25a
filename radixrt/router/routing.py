"""The router's request path: pick a replica, forward, pass the answer back.

A request that cannot reach its replica (connection refused: nothing was sent) is retried on
another one; a request the replica fails after receiving it is answered 502 (or, once a stream
has started, ends with an error event), since the generation may have run.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable

import httpx
from fastapi import Request
from fastapi.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from radixrt.router.config import RouterConfig
from radixrt.router.health import HealthChecker, Replica, ReplicaSet
from radixrt.router.keys import GENERATION_PATHS, routing_key
from radixrt.router.metrics import RouterMetrics
from radixrt.router.policy import make_policy
from radixrt.router.proxy import (
    RESPONSE_OWN,
    Exchange,
    Failure,
    Head,
    SSEFramer,
    error_response,
    forward_headers,
    keepalive_options,
    sse_error,
)

logger = logging.getLogger("radixrt.router")
REPLICA_HEADER = "x-radixrt-replica"  # which replica answered (for clients and tests)


class _ProxyStream(StreamingResponse):
    """A streamed answer that releases its exchange however the response ends."""

    def __init__(self, body: AsyncIterator[bytes], status: int, on_close: Callable[[], None]) -> None:
        super().__init__(body, status_code=status)
        self.on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.on_close()


def _with_headers(resp: Response, headers: list[tuple[str, str]]) -> Response:
    # raw_headers keeps repeated names (set-cookie) that a dict would merge. The response
    # was built without a media type, so the replica's content-type is the only one.
    resp.raw_headers.extend((k.lower().encode("latin-1"), v.encode("latin-1"))
                            for k, v in headers)
    return resp


async def _disconnected(request: Request) -> None:
    """Returns when the client goes away (the request body has been read already)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


class Router:
    def __init__(self, config: RouterConfig) -> None:
        self.config = config
        self.metrics = RouterMetrics()
        self.policy = make_policy(config)
        self.replicas = ReplicaSet(config.worker_urls, self.metrics, self.policy.forget)
        for r in self.replicas.replicas:
            self.metrics.tree_chars.labels(r.name).set_function(
                lambda r=r: self.policy.tree_chars(r))
        self.health = HealthChecker(self.replicas, config.health_interval_s,
                                    config.health_timeout_s, config.health_failures)
        self.client: httpx.AsyncClient | None = None

    async def start(self) -> None:
        # No read timeout: a generation may queue and run for minutes.
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=512)
        self.client = httpx.AsyncClient(
            timeout=httpx.Timeout(None, connect=self.config.connect_timeout_s),
            transport=httpx.AsyncHTTPTransport(limits=limits,
                                               socket_options=keepalive_options()),
            trust_env=False)
        await self.health.check_all()  # serve with the replicas' real state from the start
        self.health.start()

    async def close(self) -> None:
        await self.health.close()
        if self.client is not None:
            await self.client.aclose()

    # ------------------------------------------------------------------ routing

    def _upstream(self, replica: Replica, request: Request, body: bytes) -> httpx.Request:
        assert self.client is not None
        target = request.scope.get("raw_path") or request.url.path.encode()
        url = replica.url + target.decode("latin-1")
        if request.url.query:
            url += "?" + request.url.query
        headers = forward_headers(request.headers.items())
        headers.append(("accept-encoding", "identity"))  # SSE framing reads the bytes
        if request.client is not None:
            headers.append(("x-forwarded-for", request.client.host))
        return self.client.build_request(request.method, url, headers=headers, content=body)

    async def route(self, request: Request, body: bytes) -> Response:
        path = request.url.path
        key = ""
        if path in GENERATION_PATHS and body:
            try:
                key = routing_key(path, json.loads(body))
            except ValueError:
                pass  # the replica answers the 400
        tried: list[Replica] = []
        while True:
            candidates = [r for r in self.replicas.healthy() if r not in tried]
            if not candidates:
                self.metrics.unroutable.inc()
                why = ("every replica refused the connection" if tried
                       else "no healthy replica")
                return error_response(503, f"{why}; retry later", code="no_healthy_replica",
                                      headers={"Retry-After": "1"})
            decision = self.policy.choose(key, candidates)
            self.metrics.decisions.labels(decision.reason).inc()
            if key:
                self.metrics.key_chars.inc(len(key))
                self.metrics.matched_chars.inc(decision.matched)
            replica = decision.replica
            ex = Exchange(self.client, self._upstream(replica, request, body))  # type: ignore[arg-type]
            self.replicas.started(replica)
            release = self._releaser(replica, ex)
            try:
                head = await self._head_or_disconnect(ex, request)
            except BaseException:
                release()
                raise
            if isinstance(head, Head):
                break
            release()
            if head is None:  # the client went away; nobody reads this
                return Response(status_code=499)
            self.metrics.errors.labels(replica.name, head.kind).inc()
            if head.retryable:
                self.replicas.mark_dead(replica, head.message)
                tried.append(replica)
                continue
            self.health.check_now(replica)
            return error_response(502, f"replica {replica.name} failed before answering: "
                                       f"{head.message}")
        if head.status >= 500:
            self.metrics.errors.labels(replica.name, "status_5xx").inc()
        headers = [*forward_headers(head.headers, RESPONSE_OWN), (REPLICA_HEADER, replica.name)]
        if head.is_sse:
            return _with_headers(_ProxyStream(self._stream(ex, replica), head.status, release),
                                 headers)
        try:
            chunks = []
            async for item in ex.body():
                if isinstance(item, Failure):
                    self._failed(replica, item)
                    return error_response(502, f"replica {replica.name} failed while "
                                               f"answering: {item.message}")
                chunks.append(item)
        finally:
            release()
        return _with_headers(Response(b"".join(chunks), status_code=head.status), headers)

    def _releaser(self, replica: Replica, ex: Exchange) -> Callable[[], None]:
        done = False

        def release() -> None:  # once, however the request ends
            nonlocal done
            if not done:
                done = True
                self.replicas.finished(replica)
                ex.close()
        return release

    def _failed(self, replica: Replica, failure: Failure) -> None:
        self.metrics.errors.labels(replica.name, failure.kind).inc()
        self.health.check_now(replica)  # a dying replica: find out now, not next round
        logger.warning("request on %s failed: %s", replica.name, failure.message)

    async def _head_or_disconnect(self, ex: Exchange, request: Request) -> Head | Failure | None:
        head = asyncio.ensure_future(ex.head())
        gone = asyncio.ensure_future(_disconnected(request))
        try:
            await asyncio.wait({head, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (head, gone):
                t.cancel()
        return head.result() if head.done() and not head.cancelled() else None

    async def _stream(self, ex: Exchange, replica: Replica) -> AsyncIterator[bytes]:
        framer = SSEFramer()
        async for item in ex.body():
            if isinstance(item, Failure):
                self._failed(replica, item)
                yield sse_error(f"replica {replica.name} failed mid-stream: {item.message}")
                return
            if out := framer.feed(item):
                yield out
        if framer.pending:
            yield framer.pending

    # ------------------------------------------------------------------ broadcast

    async def flush_cache(self, request: Request) -> Response:
        """POST /flush_cache on every healthy replica; the prefix tree starts over."""
        assert self.client is not None
        targets = self.replicas.healthy()
        if not targets:
            return error_response(503, "no healthy replica", code="no_healthy_replica")
        headers = forward_headers(request.headers.items())
        results = await asyncio.gather(
            *(self.client.post(f"{r.url}/flush_cache", headers=headers) for r in targets),
            return_exceptions=True)
        self.policy.reset()
        status: dict[str, object] = {}
        for r, res in zip(targets, results, strict=True):
            status[r.name] = (res.status_code if isinstance(res, httpx.Response)
                              else f"{type(res).__name__}: {res}")
        failed = {u: s for u, s in status.items() if s != 200}
        if failed:
            codes = set(failed.values())
            only = codes.pop() if len(codes) == 1 else None
            # The same client error everywhere (e.g. 401, no API key) is the client's.
            code = only if isinstance(only, int) and 400 <= only < 500 else 502
            return error_response(code, f"flush_cache failed on {len(failed)} of "
                                        f"{len(targets)} replicas: {failed}")
        return Response(json.dumps({"success": True, "message": f"Cache flushed on "
                                    f"{len(targets)} replicas.", "replicas": status}),
                        media_type="application/json")

    def health_body(self) -> tuple[int, dict[str, object]]:
        healthy = self.replicas.healthy()
        body = {"status": "ok" if healthy else "no healthy replica",
                "healthy_replicas": len(healthy),
                "replicas": {r.name: r.healthy for r in self.replicas.replicas}}
        return (200 if healthy else 503), body
