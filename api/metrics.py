"""`GET /metrics`: the API's Prometheus metrics, open like the health probes.

Per process, from the request gate (api/middleware.py):
`auditq_http_requests_total{method,route,status}` and
`auditq_http_request_duration_seconds{method,route}`, a route by its template
(`/api/v1/audits/{audit_id}`), never a raw id; a path no route matched is `unmatched`,
a method beyond the usual seven `other`.

Fleet-wide, read from PostgreSQL at scrape time through indexes on the queued and
running audits, and kept `FLEET_TTL_S` so that a scrape storm costs one read every few
seconds: `auditq_queue_depth{priority,tenant}` and, of those,
`auditq_queue_held{priority,tenant}` (waiting for their tenant's monthly budget);
`auditq_queue_oldest_age_seconds{priority}`, of the audits a worker could start (not
held ones); `auditq_audits_running`, `auditq_batches_running`; and
`auditq_workers_alive`, from the workers' heartbeats in Redis (shared/workers.py).
With PostgreSQL or Redis away the page still answers: what they would tell is left out,
and `auditq_scrape_errors_total{source}` counts it; so does a source that does not
answer within `SOURCE_TIMEOUT_S`.

Several API processes on one port (`WEB_CONCURRENCY`, api/__main__.py) count in
prometheus-client's multiprocess mode: the page adds up the counts of them all, so a
scrape sees the same totals whichever process answers it.
"""

import asyncio
import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime

from fastapi import APIRouter
from fastapi.routing import APIRoute
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from redis.asyncio import Redis
from redis.exceptions import RedisError
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Scope

from shared import workers
from shared.audits import repository as audits
from shared.audits.priority import Priority
from shared.audits.repository import Fleet
from shared.config import Settings
from shared.db import DATABASE_ERRORS, statement_connection

FLEET_TTL_S = 5.0
# Each source's read, well inside Prometheus's 10 s scrape timeout: a source that hangs
# (a partition, a pool with no free connection) is left out like one that refuses.
SOURCE_TIMEOUT_S = 2.0
# A request's method as a label; HTTP allows any token, and a label's values must stay few.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# Request latencies: a read takes milliseconds, a batch of 1,000 a second or more.
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ApiMetrics:
    """One API process's metrics, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._requests = Counter(
            "auditq_http_requests",
            "HTTP requests answered, by route template and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self._duration = Histogram(
            "auditq_http_request_duration_seconds",
            "Time to answer an HTTP request, by route template.",
            ["method", "route"],
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self._scrape_errors = Counter(
            "auditq_scrape_errors",
            "Scrapes that could not read a fleet-wide figure, by source.",
            ["source"],
            registry=self.registry,
        )
        # A route's template as clients see it, by the route: an included router's routes
        # know their path below the prefix they were included with, not above it.
        self._templates: dict[int, str] = {}
        self._fleet: Fleet | None = None
        self._workers_alive: int | None = None
        self._fleet_read_at = float("-inf")
        # What the page shows: this registry, or every process's counts where processes
        # share them (`PROMETHEUS_MULTIPROC_DIR`, set before prometheus-client is imported).
        self.page = self.registry
        if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
            self.page = CollectorRegistry()
            # prometheus-client leaves this constructor unannotated.
            MultiProcessCollector(self.page)  # type: ignore[no-untyped-call]
        self.page.register(_FleetCollector(self))

    def name_routes(self, router: APIRouter, *, prefix: str) -> None:
        """Label the routes of `router`, included under `prefix`, by their whole path."""
        for route in router.routes:
            if isinstance(route, APIRoute):
                self._templates[id(route)] = prefix + route.path

    def observe(self, scope: Scope, status: int, seconds: float) -> None:
        route = self._template(scope)
        method = scope["method"] if scope["method"] in _METHODS else "other"
        self._requests.labels(method, route, str(status)).inc()
        self._duration.labels(method, route).observe(seconds)

    def _template(self, scope: Scope) -> str:
        route = scope.get("route")
        if route is None:
            return "unmatched"
        path = self._templates.get(id(route), getattr(route, "path", None))
        return path if isinstance(path, str) else "unmatched"

    @property
    def fleet(self) -> Fleet | None:
        return self._fleet

    @property
    def workers_alive(self) -> int | None:
        return self._workers_alive

    async def refresh(self, engine: AsyncEngine, redis: Redis, queue_name: str) -> None:
        """Read the fleet-wide figures, unless they are younger than `FLEET_TTL_S`."""
        if time.monotonic() - self._fleet_read_at < FLEET_TTL_S:
            return
        self._fleet_read_at = time.monotonic()
        try:
            self._fleet = await asyncio.wait_for(_read_fleet(engine), SOURCE_TIMEOUT_S)
        except (*DATABASE_ERRORS, TimeoutError):
            self._fleet = None
            self._scrape_errors.labels("postgresql").inc()
        try:
            self._workers_alive = await asyncio.wait_for(
                workers.alive(redis, queue_name), SOURCE_TIMEOUT_S
            )
        except (RedisError, OSError, TimeoutError):
            self._workers_alive = None
            self._scrape_errors.labels("redis").inc()


async def _read_fleet(engine: AsyncEngine) -> Fleet:
    async with statement_connection(engine) as conn:
        return await audits.fleet(conn)


class _FleetCollector(Collector):
    def __init__(self, metrics: ApiMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        if (alive := self._metrics.workers_alive) is not None:
            yield GaugeMetricFamily(
                "auditq_workers_alive", "Workers whose heartbeat is under 30 s old.", value=alive
            )
        fleet = self._metrics.fleet
        if fleet is None:
            return
        depth = GaugeMetricFamily(
            "auditq_queue_depth",
            "Audits queued, as PostgreSQL has them.",
            labels=["priority", "tenant"],
        )
        held = GaugeMetricFamily(
            "auditq_queue_held",
            "Of those, audits waiting for their tenant's monthly budget to reset or be raised.",
            labels=["priority", "tenant"],
        )
        for (priority, tenant), queued in sorted(fleet.queued.items()):
            depth.add_metric([priority, tenant], queued)
            held.add_metric([priority, tenant], queued if tenant in fleet.held_tenants else 0)
        yield depth
        yield held
        oldest = GaugeMetricFamily(
            "auditq_queue_oldest_age_seconds",
            "Age of the oldest queued audit of a priority that a worker could start: not "
            "one held by its tenant's budget (0 with none).",
            labels=["priority"],
        )
        for priority in Priority:
            oldest.add_metric([priority], _age_s(fleet.oldest_queued_at.get(priority)))
        yield oldest
        yield GaugeMetricFamily("auditq_audits_running", "Audits running.", value=fleet.running)
        yield GaugeMetricFamily(
            "auditq_batches_running",
            "Batches with an audit queued or running.",
            value=fleet.batches_running,
        )


def _age_s(moment: datetime | None) -> float:
    return 0.0 if moment is None else max(0.0, (datetime.now(UTC) - moment).total_seconds())


async def metrics_page(request: Request) -> Response:
    """`GET /metrics` (not in the OpenAPI schema)."""
    metrics: ApiMetrics = request.app.state.metrics
    settings: Settings = request.app.state.settings
    await metrics.refresh(request.app.state.engine, request.app.state.redis, settings.queue_name)
    return Response(generate_latest(metrics.page), media_type=CONTENT_TYPE_LATEST)
