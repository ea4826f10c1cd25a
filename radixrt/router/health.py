"""Replicas, their health, and the periodic health checker.

A replica is dead after `health_failures` consecutive failed checks (timeouts, non-200 such as
a server shutting down), or at once when its port refuses connections (the proxy reports
refused connections here too). A dead replica gets no new requests and keeps being checked;
it is used again once it answers. Unless it only timed out (a busy replica keeps its cache),
the policy forgets what was routed there: its process, and so its cache, is gone.

Requests in flight on a replica declared dead are left alone: if its process died, their
connections already failed; if it is only slow, they may still finish.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from radixrt.router.metrics import RouterMetrics

logger = logging.getLogger("radixrt.router")


@dataclass(eq=False)
class Replica:
    url: str
    index: int
    healthy: bool = False
    in_flight: int = 0
    failures: int = 0  # consecutive failed checks
    remembered: bool = False  # the policy may hold routing history for it

    @property
    def name(self) -> str:
        return self.url


class ReplicaSet:
    def __init__(self, urls: tuple[str, ...], metrics: RouterMetrics,
                 on_dead: Callable[[Replica], None]) -> None:
        self.replicas = [Replica(u, i) for i, u in enumerate(urls)]
        self.metrics = metrics
        self.on_dead = on_dead
        for r in self.replicas:
            metrics.healthy.labels(r.name).set(0)
            metrics.in_flight.labels(r.name).set(0)

    def healthy(self) -> list[Replica]:
        return [r for r in self.replicas if r.healthy]

    def mark_alive(self, r: Replica) -> None:
        r.failures = 0
        if not r.healthy:
            r.healthy = r.remembered = True
            self.metrics.healthy.labels(r.name).set(1)
            logger.info("replica %s is healthy", r.name)

    def mark_dead(self, r: Replica, why: str, cache_lost: bool = True) -> None:
        if r.healthy:
            logger.warning("replica %s is dead (%s); failing over", r.name, why)
            r.healthy = False
            self.metrics.healthy.labels(r.name).set(0)
        if cache_lost and r.remembered:  # (a timed-out replica may turn out to be gone)
            r.remembered = False
            self.on_dead(r)

    def check_failed(self, r: Replica, why: str, threshold: int, cache_lost: bool) -> None:
        r.failures += 1
        if r.failures >= threshold:
            self.mark_dead(r, why, cache_lost)

    def started(self, r: Replica) -> None:
        r.in_flight += 1
        self.metrics.requests.labels(r.name).inc()
        self.metrics.in_flight.labels(r.name).set(r.in_flight)

    def finished(self, r: Replica) -> None:
        r.in_flight -= 1
        self.metrics.in_flight.labels(r.name).set(r.in_flight)


class HealthChecker:
    """GET /health on every replica every `interval_s`; `check_now` for an early look."""

    def __init__(self, replicas: ReplicaSet, interval_s: float, timeout_s: float,
                 failures: int) -> None:
        self.replicas = replicas
        self.interval_s, self.failures = interval_s, failures
        self.client = httpx.AsyncClient(timeout=httpx.Timeout(timeout_s), trust_env=False)
        self._task: asyncio.Task[None] | None = None
        self._pending: set[asyncio.Task[None]] = set()

    async def check(self, r: Replica) -> None:
        try:
            resp = await self.client.get(f"{r.url}/health")
        except httpx.ConnectError as exc:  # nothing listens there: no need to wait
            self.replicas.mark_dead(r, f"connection failed: {exc or type(exc).__name__}")
            return
        except httpx.HTTPError as exc:  # timeouts: maybe only busy, so its cache stays known
            self.replicas.check_failed(r, f"health check: {type(exc).__name__}", self.failures,
                                       cache_lost=False)
            return
        if resp.status_code == 200:
            self.replicas.mark_alive(r)
        else:  # e.g. 503 while shutting down
            self.replicas.check_failed(r, f"/health answered {resp.status_code}", self.failures,
                                       cache_lost=True)

    async def check_all(self) -> None:
        await asyncio.gather(*(self.check(r) for r in self.replicas.replicas))

    def check_now(self, r: Replica) -> None:
        """Check one replica soon (after a request to it failed), without waiting."""
        task = asyncio.ensure_future(self.check(r))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.check_all()
            except Exception:  # noqa: BLE001 - the loop must outlive any one bad check
                logger.exception("health check failed")

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._loop())

    async def close(self) -> None:
        for task in [self._task, *self._pending]:
            if task is not None:
                task.cancel()
        await asyncio.gather(*(t for t in [self._task, *self._pending] if t is not None),
                             return_exceptions=True)
        await self.client.aclose()
