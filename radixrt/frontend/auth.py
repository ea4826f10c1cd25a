"""API keys. `--api-key KEY` is one key; `--api-key-file FILE` adds tenants: each key in the
file gets its own cache namespace (a cache_salt derived from the key), so tenants never share
KV. Every route but /health needs a key once any is set, /metrics and /flush_cache included.
The key comes as `Authorization: Bearer KEY` (OpenAI clients) or `x-api-key: KEY` (Anthropic
clients)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from radixrt.frontend.errors import APIError

OPEN_PATHS = frozenset({"/health"})
TENANT = "radixrt_tenant"  # the request-state entry holding the caller's cache namespace


def load_api_key_file(path: str | Path) -> dict[str, str]:
    """key -> tenant name from a file of `KEY [NAME]` lines (# comments, blank lines)."""
    keys: dict[str, str] = {}
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        fields = line.split("#", 1)[0].split(maxsplit=1)
        if not fields:
            continue
        key = fields[0]
        if key in keys:
            raise ValueError(f"{path}:{number}: the same key is listed twice")
        keys[key] = fields[1].strip() if len(fields) > 1 else f"tenant{len(keys) + 1}"
    if not keys:
        raise ValueError(f"{path} lists no API key")
    return keys


def _digest(key: bytes) -> bytes:
    return hashlib.sha256(key).digest()


def tenant_namespace(key: str) -> str:
    """The cache namespace of a tenant's key (a hash: the key never reaches the scheduler)."""
    return "tenant-" + hashlib.sha256(key.encode()).hexdigest()[:32]


def tenant_of(request: Request) -> str | None:
    """The caller's cache namespace; None without tenants (or with the --api-key key)."""
    return request.scope.get("state", {}).get(TENANT)


class APIKeyMiddleware:
    """401 unless the request carries a known key; records the key's tenant namespace."""

    def __init__(self, app: ASGIApp, api_key: str | None, tenants: dict[str, str],
                 anthropic_paths: frozenset[str] = frozenset()) -> None:
        self.app = app
        self.anthropic_paths = anthropic_paths
        # By digest: a dict lookup on a hash leaks nothing usable about the keys by timing.
        self.keys: dict[bytes, str | None] = {}
        if api_key:
            self.keys[_digest(api_key.encode())] = None
        for key in tenants:
            self.keys[_digest(key.encode())] = tenant_namespace(key)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        given = headers.get(b"x-api-key")
        auth = headers.get(b"authorization", b"")
        if given is None and auth[:7].lower() == b"bearer ":
            given = auth[7:].strip()
        digest = _digest(given) if given is not None else None
        if digest not in self.keys:
            err = APIError(401, "Incorrect or missing API key (Authorization: Bearer KEY, or "
                           "x-api-key: KEY).", code="invalid_api_key")
            await err.response(scope["path"] in self.anthropic_paths)(scope, receive, send)
            return
        scope["state"] = {**scope.get("state", {}), TENANT: self.keys[digest]}
        await self.app(scope, receive, send)
