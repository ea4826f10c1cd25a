"""The FastAPI app: OpenAI-compatible routes, Anthropic's /v1/messages, native /generate,
/tokenize and /detokenize, health and Prometheus metrics."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException as StarletteHTTPException

from radixrt.config import ServerConfig
from radixrt.frontend import anthropic, embeddings, openai_responses, responses_request
from radixrt.frontend.answers import ModelCard, ModelList
from radixrt.frontend.auth import APIKeyMiddleware
from radixrt.frontend.body_limit import BodyLimitMiddleware
from radixrt.frontend.client import AsyncTokenizerClient
from radixrt.frontend.errors import APIError
from radixrt.frontend.health import PipelineHealth
from radixrt.frontend.metrics import Metrics
from radixrt.frontend.openapi import describe_bodies
from radixrt.frontend.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    GenerateRequest,
    parse_request,
)
from radixrt.frontend.responses import json_response
from radixrt.frontend.serving import OpenAIServing
from radixrt.frontend.tokenize_api import (
    DetokenizeRequest,
    DetokenizeResponse,
    TokenizeRequest,
    TokenizeResponse,
    ask_tokenizer,
)
from radixrt.ipc.messages import DecodeReq
from radixrt.ipc.sockets import Endpoints
from radixrt.model_info import ModelInfo
from radixrt.sampling_params import InvalidRequestError

logger = logging.getLogger("radixrt.frontend")


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
    anthropic_paths = frozenset({anthropic.ROUTE})
    if config.api_key or config.api_keys:
        app.add_middleware(APIKeyMiddleware, api_key=config.api_key, tenants=config.api_keys,
                           anthropic_paths=anthropic_paths)
    app.add_middleware(BodyLimitMiddleware, max_bytes=config.limits.max_request_bytes,
                       timeout_s=config.limits.body_timeout_s)
    if config.allowed_origins:  # added last: outermost, so preflights and 401s get headers
        app.add_middleware(CORSMiddleware, allow_origins=list(config.allowed_origins),
                           allow_methods=["*"], allow_headers=["*"])

    def answer(request: Request, err: APIError) -> Response:
        # Anthropic's routes answer errors in Anthropic's shape.
        return err.response(anthropic=request.url.path in anthropic_paths)

    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> Response:
        return answer(request, exc)

    @app.exception_handler(InvalidRequestError)
    async def invalid(request: Request, exc: InvalidRequestError) -> Response:
        return answer(request, APIError.bad_request(exc))

    @app.exception_handler(RequestValidationError)
    async def validation(request: Request, exc: RequestValidationError) -> Response:
        return answer(request, APIError(400, str(exc)))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return answer(request, APIError(exc.status_code, str(exc.detail), kind))

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> Response:
        logger.exception("internal error")
        return answer(request, APIError(500, f"internal error: {type(exc).__name__}: {exc}",
                                        "internal_error"))

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await serving.chat(request)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await serving.completions(request)

    @app.post(anthropic.ROUTE)
    async def messages(request: Request) -> Response:
        return await serving.messages(request)

    @app.post(embeddings.ROUTE)
    async def create_embeddings(request: Request) -> Response:
        return await serving.embeddings(request)

    @app.post(openai_responses.ROUTE)
    async def responses(request: Request) -> Response:
        return await serving.responses(request)

    @app.post("/generate")
    async def generate(request: Request) -> Response:
        return await serving.generate(request)

    @app.post("/tokenize", response_model=TokenizeResponse)
    async def tokenize(request: Request) -> Response:
        body = parse_request(TokenizeRequest, await request.body())
        serving.check_model(body.model)
        assert serving.client is not None
        done = await ask_tokenizer(serving.client, body.to_req())
        return json_response(TokenizeResponse(count=len(done.ids), tokens=done.ids,
                                              max_model_len=info.context_length))

    @app.post("/detokenize", response_model=DetokenizeResponse)
    async def detokenize(request: Request) -> Response:
        body = parse_request(DetokenizeRequest, await request.body())
        serving.check_model(body.model)
        assert serving.client is not None
        done = await ask_tokenizer(serving.client, DecodeReq(f"detok-{uuid.uuid4().hex}",
                                                             body.tokens))
        return json_response(DetokenizeResponse(prompt=done.text))

    def model_card() -> ModelCard:
        # The served name, never the model's directory: a path tells clients nothing they
        # need and the server's layout to anyone.
        return ModelCard(id=serving.served_name, created=started, root=serving.served_name,
                         max_model_len=info.context_length)

    @app.get("/v1/models", response_model=ModelList)
    async def models() -> Response:
        return json_response(ModelList(data=[model_card()]))

    @app.get("/v1/models/{model_id:path}", response_model=ModelCard)
    async def model(model_id: str) -> Response:
        serving.check_model(model_id)
        return json_response(model_card())

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

    describe_bodies(app, {
        "/v1/chat/completions": ChatCompletionRequest, "/v1/completions": CompletionRequest,
        anthropic.ROUTE: anthropic.MessagesRequest, "/generate": GenerateRequest,
        openai_responses.ROUTE: responses_request.ResponsesRequest,
        embeddings.ROUTE: embeddings.EmbeddingRequest,
        "/tokenize": TokenizeRequest, "/detokenize": DetokenizeRequest})
    return app
