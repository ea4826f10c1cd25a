"""The router's configuration (one frozen dataclass) and its command-line flags."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from urllib.parse import urlsplit

POLICIES = ("cache_aware", "round_robin")


@dataclass(frozen=True)
class RouterConfig:
    worker_urls: tuple[str, ...]
    host: str = "127.0.0.1"
    port: int = 30000
    policy: str = "cache_aware"
    # cache_aware: follow the prefix match when it covers at least this share of the key...
    cache_threshold: float = 0.3
    # ...unless the matched replica has this many more requests in flight than the least
    # loaded one, and more than balance_rel_threshold times as many.
    balance_abs_threshold: int = 8
    balance_rel_threshold: float = 1.5
    max_tree_chars: int = 4_000_000  # per replica (~1M tokens of remembered prompts)
    health_interval_s: float = 2.0
    # Generous: a replica's frontend can be slow to answer on a saturated machine, and a
    # refused connection (the process is gone) marks a replica dead at once anyway.
    health_timeout_s: float = 5.0
    health_failures: int = 3  # consecutive failed checks (timeouts, non-200) that mark it dead
    max_body_bytes: int = 32 * 1024 * 1024
    connect_timeout_s: float = 5.0
    api_key: str | None = None
    log_level: str = "info"

    def __post_init__(self) -> None:
        urls = tuple(normalize_url(u) for u in self.worker_urls)
        if not urls:
            raise ValueError("--worker-urls needs at least one URL")
        if len(set(urls)) != len(urls):
            raise ValueError(f"--worker-urls has duplicates: {' '.join(urls)}")
        object.__setattr__(self, "worker_urls", urls)
        if self.policy not in POLICIES:
            raise ValueError(f"unknown policy {self.policy!r}; choose from {', '.join(POLICIES)}")
        if not 0.0 <= self.cache_threshold <= 1.0:
            raise ValueError("--cache-threshold must be in [0, 1]")
        if self.balance_abs_threshold < 0 or self.balance_rel_threshold < 1.0:
            raise ValueError("--balance-abs-threshold must be >= 0, --balance-rel-threshold >= 1")
        for name in ("max_tree_chars", "health_failures", "max_body_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1")
        for name in ("health_interval_s", "health_timeout_s", "connect_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"--{name[:-2].replace('_', '-')} must be positive")


def normalize_url(url: str) -> str:
    """http://host:port (no trailing slash); a bare host:port gets http://."""
    url = url.strip().rstrip("/")
    if "://" not in url:
        url = "http://" + url
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"bad worker URL {url!r}: expected http://host:port")
    return url


def add_policy_args(parser: argparse.ArgumentParser, title: str = "routing") -> None:
    """Routing flags, shared by the standalone router and launch_server --dp-size."""
    d = RouterConfig(("http://x",))
    g = parser.add_argument_group(title)
    g.add_argument("--policy", "--router-policy", dest="policy", default=d.policy,
                   choices=POLICIES,
                   help="cache_aware: the replica most likely to cache the prompt's prefix, "
                        "balanced by load; round_robin: in turn (a baseline) (default "
                        f"{d.policy})")
    g.add_argument("--cache-threshold", type=float, default=d.cache_threshold, metavar="F",
                   help="smallest share of a prompt matched in a replica's prefix tree that "
                        f"routes it there; below, the least loaded (default {d.cache_threshold})")
    g.add_argument("--balance-abs-threshold", type=int, default=d.balance_abs_threshold,
                   metavar="N", help="in-flight requests the matched replica may have beyond "
                   f"the least loaded one before load wins (default {d.balance_abs_threshold})")
    g.add_argument("--balance-rel-threshold", type=float, default=d.balance_rel_threshold,
                   metavar="F", help="...and the ratio of their loads beyond which load wins "
                   f"(default {d.balance_rel_threshold})")
    g.add_argument("--max-tree-chars", type=int, default=d.max_tree_chars, metavar="N",
                   help="characters of recent prompts remembered per replica; older ones are "
                        f"evicted (default {d.max_tree_chars})")
    g.add_argument("--health-interval", dest="health_interval_s", type=float,
                   default=d.health_interval_s, metavar="S",
                   help=f"seconds between health checks of each replica (default "
                        f"{d.health_interval_s})")
    g.add_argument("--health-timeout", dest="health_timeout_s", type=float,
                   default=d.health_timeout_s, metavar="S",
                   help=f"timeout of one health check (default {d.health_timeout_s})")
    g.add_argument("--health-failures", type=int, default=d.health_failures, metavar="N",
                   help="consecutive failed checks that mark a replica dead (default "
                        f"{d.health_failures})")
    g.add_argument("--max-body-bytes", type=int, default=d.max_body_bytes, metavar="N",
                   help=f"largest request body accepted (default {d.max_body_bytes})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m radixrt.router",
        description="OpenAI-compatible router in front of radixrt replicas: sends each request "
                    "to the replica whose radix cache most likely holds its prefix, balances "
                    "load, health-checks replicas and fails over. Serves its own /health and "
                    "/metrics; proxies every other endpoint (streaming included).")
    parser.add_argument("--worker-urls", nargs="+", required=True, metavar="URL",
                        help="replica base URLs, e.g. http://10.0.0.1:30000 http://10.0.0.2:30000")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=30000, help="port to listen on")
    parser.add_argument("--api-key", default=None, metavar="KEY",
                        help="require `Authorization: Bearer KEY` on every endpoint but /health "
                             "(the header is forwarded to the replicas either way)")
    parser.add_argument("--log-level", default="info",
                        choices=["debug", "info", "warning", "error", "critical"])
    add_policy_args(parser)
    return parser


def config_from_args(args: argparse.Namespace, **overrides: object) -> RouterConfig:
    """RouterConfig from parsed flags (only those that are RouterConfig fields)."""
    names = {f.name for f in dataclasses.fields(RouterConfig)}
    values = {n: getattr(args, n) for n in names if hasattr(args, n)}
    values.update(overrides)
    if "worker_urls" in values:
        values["worker_urls"] = tuple(values["worker_urls"])  # type: ignore[arg-type]
    return RouterConfig(**values)  # type: ignore[arg-type]
