"""python -m radixrt.launch_server: start every process of a server, serve HTTP until
SIGINT/SIGTERM (drain, then exit 0) or until a child process dies (exit 1)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import socket
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import FrameType

import uvicorn

from radixrt.config import ServerConfig
from radixrt.frontend.auth import load_api_key_file
from radixrt.log import setup_logging
from radixrt.model_info import ModelInfo, ModelLoadError
from radixrt.process_group import ProcessGroup, StartupError
from radixrt.router.dp import add_dp_args, run_data_parallel
from radixrt.server_args import (
    add_engine_args,
    add_http_limit_args,
    engine_config_from_args,
    http_limits_from_args,
)

logger = logging.getLogger("radixrt")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m radixrt.launch_server",
        description="Serve a model with an OpenAI-compatible HTTP API (/v1/chat/completions, "
                    "/v1/completions, /v1/models), Anthropic's /v1/messages, plus /generate, "
                    "/tokenize, /detokenize, /flush_cache, /health and /metrics.")
    g = parser.add_argument_group("HTTP")
    g.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    g.add_argument("--port", type=int, default=30000, help="port to listen on (default 30000)")
    g.add_argument("--api-key", default=None, metavar="KEY",
                   help="require `Authorization: Bearer KEY` (or `x-api-key: KEY`) on every "
                        "endpoint but /health")
    g.add_argument("--api-key-file", default=None, metavar="FILE",
                   help="tenants: one `KEY [NAME]` per line (# comments). Each key is accepted "
                        "like --api-key and gets its own prefix-cache namespace: tenants never "
                        "share KV")
    g.add_argument("--allowed-origins", default=None, metavar="ORIGINS",
                   help="CORS: comma-separated origins browsers may call from (`*`: any); "
                        "off by default")
    add_http_limit_args(parser)
    add_engine_args(parser)
    add_dp_args(parser)
    return parser


class _Stop(Exception):
    """SIGINT/SIGTERM before the HTTP server runs."""


def _raise_stop(sig: int, frame: FrameType | None) -> None:
    raise _Stop


class _Server(uvicorn.Server):
    """uvicorn that drains at the first signal and exits 0 afterwards.

    First SIGTERM/SIGINT: new requests get 503 and /health turns 503 while the requests in
    flight finish (up to `drain_timeout_s`, then the rest are aborted); then uvicorn shuts
    down. A second signal aborts everything and exits at once. uvicorn re-raises the signals
    it caught once it is done, which would kill us with the signal's status; we record none,
    so the process exits normally.
    """

    def __init__(self, config: uvicorn.Config, drain: Callable[[], Awaitable[int]],
                 abort: Callable[[], None]) -> None:
        super().__init__(config)
        self.drain, self.abort = drain, abort
        self.draining = False
        self.loop: asyncio.AbstractEventLoop | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        name = signal.Signals(sig).name
        if self.draining or self.should_exit or self.loop is None:
            if self.draining and not self.force_exit:
                logger.info("%s again: aborting every request and exiting now", name)
            self.force_exit = True
            self.stop()
            return
        self.draining = True
        logger.info("%s: draining: new requests get 503 while those in flight finish "
                    "(send it again to stop at once)", name)
        self.loop.call_soon_threadsafe(lambda: self.loop.create_task(self._drain()))

    async def _drain(self) -> None:
        aborted = await self.drain()
        if aborted:
            logger.warning("drain timeout: aborted %d requests still running", aborted)
        self.should_exit = True

    def stop(self) -> None:
        """Stop now: abort what runs (from any thread)."""
        self.should_exit = True
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self.abort)


def run_server(config: ServerConfig, info: ModelInfo) -> int:
    """Start the processes and serve; return the exit status."""
    from radixrt.backend import start_backend
    from radixrt.frontend.app import create_app
    from radixrt.frontend.connection_guard import guarded_protocol, raise_open_file_limit

    engine = config.engine
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _raise_stop)
    group = ProcessGroup()
    try:
        # The tokenizer first: it loads while the worker loads the model.
        group.start("tokenizer", "tokenizer", engine.log_level, info)
        start_backend(group, engine, info)
        group.wait_ready()
        app = create_app(config, group.endpoints, info)
    except StartupError as exc:
        logger.error("radixrt failed to start: %s", exc)
        group.shutdown()
        return 1
    except _Stop:
        group.shutdown()
        return 0
    except BaseException:
        group.shutdown()
        raise

    serving = app.state.serving
    limits = config.limits
    protocol = guarded_protocol(limits, raise_open_file_limit())
    logger.debug("at most %d connections", protocol.table.max_connections)
    # log_config=None: uvicorn's lines go through our handler (format, repeat filter).
    server = _Server(uvicorn.Config(app, host=config.host, port=config.port, log_level="warning",
                                    log_config=None, access_log=False, http=protocol,
                                    timeout_keep_alive=limits.keep_alive_timeout_s,
                                    timeout_graceful_shutdown=5),
                     lambda: serving.drain(limits.drain_timeout_s), serving.abort_all)
    died: list[str] = []

    def on_death(name: str, code: int | None) -> None:
        logger.error("error: the %s process died (exit code %s); shutting down", name, code)
        died.append(name)
        server.stop()

    name = engine.served_model_name
    if name == "default":
        name = Path(engine.model_path).name

    async def serve() -> None:
        server.loop = asyncio.get_running_loop()
        task = asyncio.create_task(server.serve())
        while not server.started and not task.done():
            await asyncio.sleep(0.05)
        if server.started:
            logger.info("radixrt serving %s at http://%s:%d", name, config.host, config.port)
        await task

    group.watch(on_death)
    try:
        asyncio.run(serve())
    except _Stop:  # a signal in the instant before uvicorn installed its handlers
        pass
    except SystemExit as exc:  # uvicorn exits this way when it cannot bind
        return int(exc.code or 1)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):  # no second interruption of the teardown
            signal.signal(sig, signal.SIG_IGN)
        group.shutdown()
    if died:
        return 1
    return 0 if server.started else 1


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.dp_size > 1 and (args.api_key_file or args.allowed_origins):
        parser.error("--api-key-file and --allowed-origins are not implemented with --dp-size "
                     "> 1 (the router checks one --api-key)")
    try:
        api_keys = load_api_key_file(args.api_key_file) if args.api_key_file else {}
    except (OSError, ValueError) as exc:
        parser.error(f"--api-key-file: {exc}")
    origins = tuple(o.strip() for o in (args.allowed_origins or "").split(",") if o.strip())
    if args.dp_size > 1:  # N whole servers behind the router (radixrt/router/dp.py)
        return run_data_parallel(parser, args)
    try:
        engine = engine_config_from_args(args)
    except ValueError as exc:  # flags that contradict each other: one usage line, exit 2
        parser.error(str(exc))
    setup_logging(engine.log_level, "server")
    try:  # one clear line instead of one per process
        info = ModelInfo.load(engine)
    except ModelLoadError as exc:
        logger.error("radixrt failed to start: %s", exc)
        return 1
    if (err := _port_unavailable(args.host, args.port)) is not None:  # before loading a model
        logger.error("radixrt failed to start: cannot listen on %s:%d: %s", args.host, args.port,
                     err)
        return 1
    try:
        limits = http_limits_from_args(args)
    except ValueError as exc:
        parser.error(str(exc))
    config = ServerConfig(engine=engine, host=args.host, port=args.port, api_key=args.api_key,
                          api_keys=api_keys, allowed_origins=origins, limits=limits,
                          trust_request_chat_template=bool(args.trust_request_chat_template),
                          tool_call_parser=args.tool_call_parser,
                          reasoning_parser=args.reasoning_parser)
    return run_server(config, info)


def _port_unavailable(host: str, port: int) -> str | None:
    try:
        with socket.create_server((host, port)):  # sets SO_REUSEADDR, as uvicorn does
            return None
    except OSError as exc:
        return exc.strerror or str(exc)


if __name__ == "__main__":
    sys.exit(main())
