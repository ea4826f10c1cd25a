"""Prometheus metrics of the router (its own registry; the replicas export theirs)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest


class RouterMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("radixrt_router_requests", "Requests sent to a replica",
                                ["replica"], registry=r)
        self.errors = Counter(
            "radixrt_router_request_errors",
            "Failed requests by replica and kind: connect (refused, retried elsewhere), "
            "disconnect (the replica went away mid-request), status_5xx (it answered 5xx)",
            ["replica", "kind"], registry=r)
        self.in_flight = Gauge("radixrt_router_requests_in_flight",
                               "Requests sent to a replica and not finished", ["replica"],
                               registry=r)
        self.healthy = Gauge("radixrt_router_replica_healthy",
                             "1 if the replica passes health checks, else 0", ["replica"],
                             registry=r)
        self.decisions = Counter(
            "radixrt_router_routing_decisions",
            "Routing decisions by reason: prefix_match (the replica caching the longest "
            "prefix), load_balance (the match was too loaded), short_match (no useful match: "
            "least loaded), no_key (no prompt: least loaded), round_robin",
            ["reason"], registry=r)
        self.matched_chars = Counter("radixrt_router_matched_chars",
                                     "Prompt characters matched in the prefix tree of the "
                                     "chosen replica", registry=r)
        self.key_chars = Counter("radixrt_router_key_chars",
                                 "Prompt characters of routed requests", registry=r)
        self.tree_chars = Gauge("radixrt_router_tree_chars",
                                "Characters of recent prompts remembered per replica",
                                ["replica"], registry=r)
        self.unroutable = Counter("radixrt_router_unroutable_requests",
                                  "Requests refused with 503: no healthy replica", registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
