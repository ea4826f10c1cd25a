"""python -m radixrt.router: serve the router until SIGINT/SIGTERM (exit 0)."""

from __future__ import annotations

import logging
import signal
import socket
from types import FrameType

import uvicorn

from radixrt.router.config import RouterConfig, build_parser, config_from_args

logger = logging.getLogger("radixrt.router")


class RouterServer(uvicorn.Server):
    """uvicorn that exits 0 on SIGINT/SIGTERM (it would re-raise the signal it caught) and
    can be stopped from another thread (stop())."""

    def __init__(self, config: RouterConfig, graceful_s: float = 5.0) -> None:
        from radixrt.router.app import create_app

        self.router_config = config
        super().__init__(uvicorn.Config(create_app(config), host=config.host, port=config.port,
                                        log_level="warning", access_log=False,
                                        timeout_graceful_shutdown=graceful_s))

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if not self.should_exit:
            logger.info("%s: shutting down the router", signal.Signals(sig).name)
        elif sig == signal.SIGINT:
            self.force_exit = True  # a second Ctrl-C: stop waiting for open streams
        self.should_exit = True

    def stop(self) -> None:
        self.should_exit = True  # uvicorn's main loop polls it

    def serve_until_stopped(self) -> int:
        """Serve; 0 after a signal or stop(), 1 if it could not start (e.g. bind failed)."""
        try:
            self.run()
        except SystemExit as exc:  # uvicorn exits this way when it cannot bind
            return int(exc.code or 1)
        if self.started:
            return 0
        return 1


def setup_logging(level: str, who: str = "router") -> None:
    from radixrt.log import setup_logging as setup

    setup(level, who)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per proxied request


def port_unavailable(host: str, port: int) -> str | None:
    """Why host:port cannot be listened on, or None (checked before anything starts)."""
    try:
        with socket.create_server((host, port)):  # sets SO_REUSEADDR, as uvicorn does
            return None
    except OSError as exc:
        return exc.strerror or str(exc)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
    except ValueError as exc:
        parser.error(str(exc))
    setup_logging(config.log_level)
    if (err := port_unavailable(config.host, config.port)) is not None:
        logger.error("router failed to start: cannot listen on %s:%d: %s", config.host,
                     config.port, err)
        return 1
    server = RouterServer(config)
    logger.info("router on http://%s:%d for %s", config.host, config.port,
                " ".join(config.worker_urls))
    return server.serve_until_stopped()
