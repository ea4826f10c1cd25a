"""The FastAPI app: OpenAI-compatible routes, native /generate, health and Prometheus metrics."""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from radixrt.config import ServerConfig
from radixrt.frontend.body_limit import BodyLimitMiddleware
from radixrt.frontend.client import AsyncTokenizerClient
from radixrt.frontend.errors import APIError
from radixrt.frontend.health import PipelineHealth
from radixrt.frontend.metrics import Metrics
from radixrt.frontend.protocol import ModelCard, ModelList
from radixrt.frontend.responses import json_response
from radixrt.frontend.serving import OpenAIServing
from radixrt.ipc.sockets import Endpoints
from radixrt.model_info import ModelInfo
from radixrt.sampling_params import InvalidRequestError

logger = logging.getLogger("radixrt.frontend")


class APIKeyMiddleware:
    """401 unless `Authorization: Bearer <key>`; /health stays open for probes."""

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app = app
        self.expected = f"Bearer {api_key}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] != "/health":
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                err = APIError(401, "Incorrect or missing API key (Authorization: Bearer ...).",
                               code="invalid_api_key")
                await err.response()(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(config: ServerConfig, endpoints: Endpoints, info: ModelInfo) -> FastAPI:
    """The app for a server whose tokenizer process listens at `endpoints`. The frontend holds
    no tokenizer: the token strings of logprobs come with the deltas."""
    serving = OpenAIServing(config, info, Metrics())
    started = int(time.time())
    health: list[PipelineHealth] = []

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        serving.client = AsyncTokenizerClient(endpoints)
        health.append(PipelineHealth(serving.client.ping, config.limits.health_stall_s))
        serving.client.on_pong = health[0].on_pong
        serving.client.start()
        yield
        serving.abort_all()
        serving.client.close()

    app = FastAPI(title="radixrt", version="0.1.0", lifespan=lifespan)
    app.state.serving = serving
    if config.api_key:
        app.add_middleware(APIKeyMiddleware, api_key=config.api_key)
    app.add_middleware(BodyLimitMiddleware, max_bytes=config.limits.max_request_bytes,
                       timeout_s=config.limits.body_timeout_s)

    @app.exception_handler(APIError)
    async def api_error(_: Request, exc: APIError) -> Response:
        return exc.response()

    @app.exception_handler(InvalidRequestError)
    async def invalid(_: Request, exc: InvalidRequestError) -> Response:
        return APIError.bad_request(exc).response()

    @app.exception_handler(RequestValidationError)
    async def validation(_: Request, exc: RequestValidationError) -> Response:
        return APIError(400, str(exc)).response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> Response:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return APIError(exc.status_code, str(exc.detail), kind).response()

    @app.exception_handler(Exception)
    async def internal(_: Request, exc: Exception) -> Response:
        logger.exception("internal error")
        return APIError(500, f"internal error: {type(exc).__name__}: {exc}",
                        "internal_error").response()

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await serving.chat(request)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await serving.completions(request)

    @app.post("/generate")
    async def generate(request: Request) -> Response:
        return await serving.generate(request)

    @app.get("/v1/models")
    async def models() -> Response:
        # The served name, never the model's directory: a path tells clients nothing they
        # need and the server's layout to anyone.
        card = ModelCard(id=serving.served_name, created=started, root=serving.served_name,
                         max_model_len=info.context_length)
        return json_response(ModelList(data=[card]))

    @app.get("/health")
    async def health_check() -> Response:
        """200 while every stage answers; 503 while draining or once a stage went silent."""
        if serving.draining:
            return JSONResponse({"status": "shutting down"}, status_code=503,
                                headers={"Retry-After": "5"})
        stuck = await health[0].check()
        if stuck is not None:
            stage, why = stuck
            logger.warning("/health: %s", why)
            return JSONResponse({"status": "unhealthy", "stage": stage, "message": why},
                                status_code=503)
        return JSONResponse({"status": "ok"})

    @app.get("/metrics")
    async def metrics() -> Response:
        assert serving.client is not None
        try:
            serving.metrics.observe_stats(await serving.client.stats(timeout_s=5.0))
        except asyncio.TimeoutError:
            logger.warning("/metrics: the scheduler did not answer; page/queue gauges are stale")
        return Response(serving.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.post("/flush_cache")
    async def flush_cache() -> Response:
        """Flush now. While requests run, the pages they hold stay: 409, saying how much of
        the rest was freed (the scheduler answers within one step, never waits for idle)."""
        assert serving.client is not None
        try:
            done = await serving.client.flush_cache()
        except asyncio.TimeoutError:
            raise APIError(503, "The scheduler did not answer the flush.", "service_unavailable",
                           headers={"Retry-After": "1"}) from None
        if not done.flushed:
            raise APIError(409, f"The cache was not flushed: {done.running} requests are "
                           f"running and hold their cached prefixes. The {done.pages_freed} "
                           "pages no request held were freed; flush again once idle to drop "
                           "everything.", code="requests_running")
        return JSONResponse({"success": True, "message": "Cache flushed.",
                             "pages_freed": done.pages_freed})

    return app
