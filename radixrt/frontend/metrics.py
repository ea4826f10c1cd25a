"""Prometheus metrics of one server (a per-app registry, so tests can build several apps)."""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily

from radixrt.ipc.messages import SchedulerStats, TextDelta

LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
                   7.5, 10.0, 20.0, 40.0, 80.0)
E2E_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0, 640.0)


class StepTotals:
    """The scheduler's cumulative step accounting, exported as counters with its own totals
    (from the last StatsReq): rate(forward) / rate(steps) is the worker's time per step,
    rate(exposed_host) / rate(exposed_host_steps) the host time it waited on per step."""

    SERIES = (("radixrt_steps", "Forward steps run", "steps"),
              ("radixrt_step_forward_seconds",
               "Worker time in steps: inputs applied, forward pass, sampling", "forward_seconds"),
              ("radixrt_scheduler_busy_seconds",
               "Scheduler time spent scheduling and processing results", "tick_seconds"),
              ("radixrt_exposed_host_seconds",
               "Time the worker sat idle between back-to-back steps, waiting for the host",
               "exposed_seconds"),
              ("radixrt_exposed_host_steps",
               "Back-to-back steps that exposed_host is measured over", "exposed_steps"))

    def __init__(self) -> None:
        self.stats: SchedulerStats | None = None

    def collect(self) -> Iterator[CounterMetricFamily]:
        for name, doc, field in self.SERIES:
            family = CounterMetricFamily(name, doc)
            family.add_metric([], getattr(self.stats, field) if self.stats is not None else 0.0)
            yield family


class Metrics:
    """The server's Prometheus series: request counters and latency histograms observed in the
    frontend, queue and page gauges from the scheduler's stats at scrape time."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("radixrt_requests", "Finished generation requests (one per "
                                "choice), by finish reason", ["finish_reason"], registry=r)
        self.prompt_tokens = Counter("radixrt_prompt_tokens", "Prompt tokens processed",
                                     registry=r)
        self.cached_tokens = Counter("radixrt_cached_prompt_tokens",
                                     "Prompt tokens served from the radix cache", registry=r)
        self.generation_tokens = Counter("radixrt_generation_tokens", "Tokens generated",
                                         registry=r)
        self.ttft = Histogram("radixrt_time_to_first_token_seconds", "Time to first token",
                              buckets=LATENCY_BUCKETS, registry=r)
        self.itl = Histogram("radixrt_inter_token_latency_seconds",
                             "Time between output tokens", buckets=LATENCY_BUCKETS, registry=r)
        self.e2e = Histogram("radixrt_e2e_request_latency_seconds", "Request latency",
                             buckets=E2E_BUCKETS, registry=r)
        self.in_flight = Gauge("radixrt_requests_in_flight",
                               "Requests submitted and not finished (frontend view)", registry=r)
        # From a StatsReq at scrape time.
        self.running = Gauge("radixrt_num_running_requests", "Requests in the running batch",
                             registry=r)
        self.waiting = Gauge("radixrt_num_waiting_requests", "Requests waiting for admission",
                             registry=r)
        self.pages_total = Gauge("radixrt_pages_total", "KV-cache pages", registry=r)
        self.pages_used = Gauge("radixrt_pages_used", "KV pages held by running requests",
                                registry=r)
        self.pages_evictable = Gauge("radixrt_pages_evictable",
                                     "KV pages cached in the radix tree and not in use",
                                     registry=r)
        self.pages_free = Gauge("radixrt_pages_free", "Free KV pages", registry=r)
        self.cache_hit_rate = Gauge("radixrt_cache_hit_rate",
                                    "Cached prompt tokens / prompt tokens, since start",
                                    registry=r)
        self.step_totals = StepTotals()
        r.register(self.step_totals)

    def observe_stats(self, s: SchedulerStats) -> None:
        self.running.set(s.running)
        self.waiting.set(s.waiting)
        self.pages_total.set(s.pages_total)
        self.pages_free.set(s.pages_free)
        self.pages_evictable.set(s.pages_evictable)
        self.pages_used.set(max(0, s.pages_total - s.pages_free - s.pages_evictable))
        self.cache_hit_rate.set(s.cache_hit_tokens / s.prompt_tokens if s.prompt_tokens else 0.0)
        self.step_totals.stats = s

    def render(self) -> bytes:
        return generate_latest(self.registry)


class RequestTimer:
    """Latency bookkeeping of one sub-request (one choice)."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.start = self.last = time.perf_counter()
        self.first_token = False

    def on_delta(self, d: TextDelta) -> None:
        now = time.perf_counter()
        if d.token_ids:
            if not self.first_token:
                self.metrics.ttft.observe(now - self.start)
                self.first_token = True
            else:
                self.metrics.itl.observe((now - self.last) / len(d.token_ids))
            self.last = now
        if d.finished and d.error is None:
            m = self.metrics
            m.requests.labels(d.finish_reason or "unknown").inc()
            m.prompt_tokens.inc(d.prompt_tokens)
            m.cached_tokens.inc(d.cached_tokens)
            m.generation_tokens.inc(d.completion_tokens)
            m.e2e.observe(now - self.start)
        elif d.finished:
            self.metrics.requests.labels("error").inc()
