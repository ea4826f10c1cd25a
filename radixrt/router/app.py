"""The router's FastAPI app: its own /health, /metrics and /flush_cache (to every replica);
every other path and method is proxied to a replica."""

from __future__ import annotations

import hmac
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.types import ASGIApp, Receive, Scope, Send

from radixrt.router.config import RouterConfig
from radixrt.router.proxy import error_response
from radixrt.router.routing import Router

logger = logging.getLogger("radixrt.router")
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"]


class BodyTooLarge(Exception):
    pass


class _RequireKey:
    """401 unless `Authorization: Bearer <key>`; /health stays open for probes."""

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app = app
        self.expected = f"Bearer {api_key}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] != "/health":
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                resp = error_response(401, "Incorrect or missing API key (Authorization: "
                                      "Bearer ...).", "invalid_request_error", "invalid_api_key")
                await resp(scope, receive, send)
                return
        await self.app(scope, receive, send)


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(config: RouterConfig) -> FastAPI:
    router = Router(config)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await router.start()
        healthy = len(router.replicas.healthy())
        logger.info("router: %d of %d replicas healthy (policy %s)", healthy,
                    len(config.worker_urls), config.policy)
        yield
        await router.close()

    # No docs routes of its own: /docs, /openapi.json go to a replica like any other path.
    app = FastAPI(title="radixrt router", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.router = router
    if config.api_key:
        app.add_middleware(_RequireKey, api_key=config.api_key)

    @app.exception_handler(BodyTooLarge)
    async def too_large(_: Request, exc: BodyTooLarge) -> Response:
        return error_response(413, f"request body is larger than {config.max_body_bytes} bytes",
                              "invalid_request_error", "request_too_large")

    @app.exception_handler(Exception)
    async def internal(_: Request, exc: Exception) -> Response:
        logger.exception("router error")
        return error_response(500, f"router error: {type(exc).__name__}: {exc}",
                              "internal_error", "router_error")

    @app.get("/health")
    async def health() -> Response:
        status, body = router.health_body()
        return JSONResponse(body, status_code=status)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(router.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.post("/flush_cache")
    async def flush_cache(request: Request) -> Response:
        await read_body(request, config.max_body_bytes)
        return await router.flush_cache(request)

    @app.api_route("/{path:path}", methods=METHODS)
    async def proxy(request: Request) -> Response:
        body = await read_body(request, config.max_body_bytes)
        return await router.route(request, body)

    return app
