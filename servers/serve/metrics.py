"""A server's Prometheus metrics (`GET /metrics`): requests, latency, queue, and what the answers cost.

Each app has a registry of its own, so several servers (or tests) in one process never share
counters. Requests and latency come from the HTTP base's observer hook, the queue from admission;
the app reports each answer's tokens per candidate and switcher calls.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.requests import Request
from starlette.responses import Response

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class Metrics:
    """The counters of one server, named `<prefix>_...`."""

    def __init__(self, prefix: str) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(f"{prefix}_requests", "HTTP requests answered, by route and status", ["route", "status"],
                                registry=r)
        self.latency = Histogram(f"{prefix}_request_duration_seconds", "Seconds from a request to its last byte",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=r)
        self.running = Gauge(f"{prefix}_running_requests", "Graph runs holding a slot", registry=r)
        self.queue = Gauge(f"{prefix}_queue_depth", "Requests waiting for a slot", registry=r)
        self.tokens = Counter(f"{prefix}_candidate_tokens", "Answer tokens written, by candidate", ["candidate"],
                              registry=r)
        self.patches = Counter(f"{prefix}_candidate_patches", "Patches written, by candidate", ["candidate"], registry=r)
        self.switcher_calls = Counter(f"{prefix}_switcher_calls", "Decisions the learned switcher was asked for",
                                      registry=r)

    def observe(self, route: str, status: int, seconds: float) -> None:
        """The HTTP base's observer: one request answered."""
        self.requests.labels(route, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def admission(self, running: int, waiting: int) -> None:
        self.running.set(running)
        self.queue.set(waiting)

    def answer(self, by_candidate: dict[str, dict[str, int]], switcher_calls: int) -> None:
        """One answer: {candidate: {"patches", "output_tokens"}} and how often the switcher was asked."""
        for name, usage in by_candidate.items():
            self.tokens.labels(name).inc(usage.get("output_tokens", 0))
            self.patches.labels(name).inc(usage.get("patches", 0))
        self.switcher_calls.inc(switcher_calls)

    async def endpoint(self, request: Request) -> Response:
        """GET /metrics: Prometheus' text format."""
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)
