"""launch_server --dp-size N: N whole servers (replicas) on loopback ports behind the router
on the public port, in one command.

Each replica is `python -m radixrt.launch_server` with the same engine flags, its own port and
its share of the cores (or its own GPU), in a session of its own so that a terminal's Ctrl-C
reaches only this parent, which stops everything in order: the router first (no new
requests), then the replicas (SIGTERM, then SIGKILL after a grace period). The replicas get
SIGKILL from the kernel if this parent dies without cleaning up (PR_SET_PDEATHSIG), and
their own children die with them. A replica that dies while serving is failed over by the
router; when none is left the whole thing exits 1.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from radixrt.router.config import add_policy_args, config_from_args

logger = logging.getLogger("radixrt")
STOP_GRACE_S = 30.0


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_dp_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument_group("data parallel").add_argument(
        "--dp-size", type=_positive_int, default=1, metavar="N",
        help="run N replicas of the server (each its own processes and KV cache) behind a "
             "prefix-affinity router on --host/--port (default 1: no router)")
    add_policy_args(parser, "routing (with --dp-size > 1)")


class _Stop(Exception):
    pass


def _raise_stop(sig: int, frame: FrameType | None) -> None:
    raise _Stop


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def engine_argv(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list[str]:
    """The engine and HTTP-limit flags given on this command line, rendered again for a
    replica."""
    from radixrt.server_args import add_engine_args, add_http_limit_args

    engine_parser = argparse.ArgumentParser(add_help=False)
    add_engine_args(engine_parser)
    add_http_limit_args(engine_parser)
    out: list[str] = []
    for action in engine_parser._actions:  # argparse has no public accessor
        value = getattr(args, action.dest, None)
        if value is None or not action.option_strings:
            continue
        flag = action.option_strings[0]
        if isinstance(action, argparse._StoreTrueAction):
            out += [flag] if value else []
        else:
            out += [flag, str(value)]
    return out


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _gpu_count(device: str | None) -> int:
    """GPUs to spread the replicas over (0: CPU, or one device named explicitly)."""
    if device not in (None, "auto", "cuda") or not Path("/dev/nvidiactl").exists():
        return 0  # (the check spares CPU machines importing torch here)
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # noqa: BLE001 - no usable torch CUDA: run on CPU
        return 0


class Replicas:
    def __init__(self, dp_size: int, args: argparse.Namespace, parser: argparse.ArgumentParser,
                 api_key: str | None) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self.ports = [_free_port() for _ in range(dp_size)]
        self.cmd = [sys.executable, "-m", "radixrt.launch_server", "--host", "127.0.0.1",
                    *engine_argv(parser, args)]
        if args.num_threads is None:  # share the cores; an explicit value is per replica
            cores = len(os.sched_getaffinity(0))
            self.cmd += ["--num-threads", str(max(1, cores // dp_size))]
        if api_key:
            self.cmd += ["--api-key", api_key]
        self.device = args.device

    def start(self) -> None:
        gpus = _gpu_count(self.device)
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        gpu_ids = visible.split(",") if visible else [str(i) for i in range(gpus)]
        if gpus and gpus < len(self.ports):
            logger.warning("--dp-size %d on %d GPUs: replicas share GPUs", len(self.ports), gpus)
        for i, port in enumerate(self.ports):
            env = dict(os.environ)
            if gpus:
                env["CUDA_VISIBLE_DEVICES"] = gpu_ids[i % gpus]
            proc = subprocess.Popen([*self.cmd, "--port", str(port)], env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True,
                                    preexec_fn=_die_with_parent)
            self.procs.append(proc)
            threading.Thread(target=_relay, args=(proc, f"[replica {i}] "), daemon=True).start()
        logger.info("data parallel: %d replicas on ports %s", len(self.ports),
                    ", ".join(map(str, self.ports)))

    @property
    def urls(self) -> list[str]:
        return [f"http://127.0.0.1:{p}" for p in self.ports]

    def wait_ready(self) -> str | None:
        """Block until every replica answers /health; the error if one exits first."""
        import httpx

        pending = set(range(len(self.procs)))
        with httpx.Client(timeout=2.0, trust_env=False) as client:
            while pending:
                for i in sorted(pending):
                    if (code := self.procs[i].poll()) is not None:
                        return f"replica {i} exited with code {code} before it was ready"
                    try:
                        if client.get(f"{self.urls[i]}/health").status_code == 200:
                            pending.discard(i)
                    except httpx.HTTPError:
                        pass
                time.sleep(0.25)
        return None

    def alive(self) -> list[int]:
        return [i for i, p in enumerate(self.procs) if p.poll() is None]

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for p in self.procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for p in self.procs:  # stragglers, and whatever their sessions still hold
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            if p.poll() is None:
                p.wait()


def _relay(proc: subprocess.Popen[bytes], prefix: str) -> None:
    """Copy a replica's log lines to our stderr, saying which replica wrote them."""
    assert proc.stdout is not None
    for line in proc.stdout:
        sys.stderr.write(prefix + line.decode(errors="replace"))
    sys.stderr.flush()


def _watch(replicas: Replicas, on_all_dead: Callable[[], None],
           stopping: threading.Event) -> None:
    reported: set[int] = set()
    while not stopping.wait(0.5):
        for i, p in enumerate(replicas.procs):
            if i not in reported and p.poll() is not None:
                reported.add(i)
                logger.error("error: replica %d (port %d) exited with code %s; the router "
                             "fails over to the others", i, replicas.ports[i], p.returncode)
        if not replicas.alive():
            logger.error("error: every replica has exited; shutting down")
            on_all_dead()
            return


def run_data_parallel(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """Serve args.dp_size replicas behind the router; return the exit status."""
    from radixrt.router.server import RouterServer, port_unavailable, setup_logging

    setup_logging(args.log_level or "info", "dp")
    try:  # routing flags, checked before anything starts
        config_from_args(args, worker_urls=("http://127.0.0.1:1",))
    except ValueError as exc:
        parser.error(str(exc))
    if args.model_path is None:  # build the default model once, not in every replica
        from radixrt.default_model import default_model_dir

        args.model_path = str(default_model_dir())
    if not Path(args.model_path).is_dir():
        logger.error("radixrt failed to start: model directory %s does not exist",
                     args.model_path)
        return 1
    if (err := port_unavailable(args.host, args.port)) is not None:
        logger.error("radixrt failed to start: cannot listen on %s:%d: %s", args.host,
                     args.port, err)
        return 1
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _raise_stop)
    replicas: Replicas | None = None
    stopping = threading.Event()
    all_dead = threading.Event()
    try:
        replicas = Replicas(args.dp_size, args, parser, args.api_key)
        replicas.start()
        if (err := replicas.wait_ready()) is not None:
            logger.error("radixrt failed to start: %s", err)
            return 1
        config = config_from_args(args, worker_urls=tuple(replicas.urls),
                                  log_level=args.log_level or "info")
        server = RouterServer(config)

        def on_all_dead() -> None:
            all_dead.set()
            server.stop()

        threading.Thread(target=_watch, args=(replicas, on_all_dead, stopping),
                         daemon=True).start()
        logger.info("radixrt serving %d replicas at http://%s:%d", args.dp_size, args.host,
                    args.port)
        code = server.serve_until_stopped()
        return 1 if all_dead.is_set() else code
    except _Stop:
        return 0
    finally:
        stopping.set()
        for sig in (signal.SIGINT, signal.SIGTERM):  # no second interruption of the teardown
            signal.signal(sig, signal.SIG_IGN)
        if replicas is not None:
            replicas.stop()
