"""Prometheus metrics of the edge: requests by route and status, produce latency, events by outcome.

One `EdgeMetrics` per app on its own registry, so several apps (tests) in one process do not collide.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send


@dataclass
class EdgeMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        self.requests = Counter("edge_http_requests_total", "HTTP requests by route template and status",
                                ["method", "route", "status"], registry=self.registry)
        self.request_seconds = Histogram("edge_http_request_seconds", "HTTP request latency by route",
                                         ["method", "route"], registry=self.registry)
        self.produce_seconds = Histogram("edge_kafka_produce_seconds",
                                         "time from produce to acknowledgement of one request's messages",
                                         ["topic"], registry=self.registry)
        self.usage_events = Counter("edge_usage_events_total", "usage events by outcome and reason",
                                    ["outcome", "reason"], registry=self.registry)
        # NOTE: the quota service's metrics live here, once per app, and not in the service: the service is
        # rebuilt by every lifespan (a test client runs one per request), and a registry takes a name once.
        self.quota_batch_size = Histogram("edge_quota_batch_requests", "report-credit requests decided per batch",
                                          buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=self.registry)
        self.quota_batch_seconds = Histogram("edge_quota_batch_seconds", "time to decide and write one batch",
                                             ["path"], registry=self.registry)


class MetricsMiddleware:
    def __init__(self, app: ASGIApp, *, metrics: EdgeMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = [500]

        async def recording_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", "unmatched")
            self.metrics.requests.labels(scope["method"], template, str(status[0])).inc()
            self.metrics.request_seconds.labels(scope["method"], template).observe(time.perf_counter() - started)
