"""The gateway's Prometheus metrics (names and meaning: docs/observability.md), and
``GET /metrics``.

Counters and histograms are kept per process; with STRUCTQ_WORKERS > 1, ``python -m api`` points
PROMETHEUS_MULTIPROC_DIR at a fresh folder before the processes start, and a scrape (answered by
any one of them) adds up every process's files (prometheus-client's multiprocess mode). The
queue's figures are read from Redis when scraped, once per scrape.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, cast

import redis.asyncio as aioredis
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.keys import (
    DEAD_LETTER,
    PRIORITY_LEVELS,
    model_queued_index,
    queue_list,
    status_index,
)
from shared.metrics import LATENCY_BUCKETS
from shared.script_calls import Created, NewJob
from shared.workers import live_workers

if TYPE_CHECKING:
    from api.settings import ApiSettings

__all__ = [
    "HttpMetrics",
    "compile_checked",
    "janitor_did",
    "metrics_response",
    "refused",
    "submitted",
]

_REQUESTS = Counter(
    "structq_http_requests_total",
    "Requests answered, by route template, method and status.",
    ["route", "method", "status"],
)
_DURATION = Histogram(
    "structq_http_request_duration_seconds",
    "Time to the response's start (a long-poll counts its wait).",
    ["route", "method"],
    buckets=LATENCY_BUCKETS,
)
_SUBMITTED = Counter(
    "structq_jobs_submitted_total",
    "Jobs stored, by model and output type.",
    ["model", "output_type"],
)
_REFUSALS = Counter(
    "structq_refusals_total",
    "Requests refused with an error, by HTTP status and the error body's code.",
    ["status", "code"],
)
_COMPILE_CHECKS = Counter(
    "structq_compile_checks_total",
    "Structured-output specs checked at submit, by verdict.",
    ["verdict"],
)
_COMPILE_DURATION = Histogram(
    "structq_compile_check_duration_seconds",
    "Time of one check in a compile process.",
    buckets=LATENCY_BUCKETS,
)
_JANITOR = Counter(
    "structq_janitor_actions_total",
    "What the janitor did to jobs, by action.",
    ["action"],
)


def submitted(jobs: Iterable[NewJob], outcomes: Iterable[Created]) -> None:
    """Count the jobs of one ``create_many`` call that it stored."""
    for new, created in zip(jobs, outcomes, strict=True):
        if created.record is not None:
            _SUBMITTED.labels(new.job.model, new.job.output_type.type).inc()


def refused(status: int, code: str) -> None:
    _REFUSALS.labels(str(status), code).inc()


def compile_checked(verdict: str, seconds: float | None) -> None:
    """A check ran (``verdict``: compiles, does_not_compile, timeout, crashed)."""
    _COMPILE_CHECKS.labels(verdict).inc()
    if seconds is not None:
        _COMPILE_DURATION.observe(seconds)


def janitor_did(action: str, count: int = 1) -> None:
    if count:
        _JANITOR.labels(action).inc(count)


# Each request's two series, by (route template, method, status): labels() is looked up once.
_SERIES: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}


class HttpMetrics:
    """ASGI middleware: every HTTP request's count and time to its response's start, by the
    template of the route that answered it (``other``: none did)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        elapsed: float | None = None

        async def timed(message: Message) -> None:
            nonlocal status, elapsed
            if message["type"] == "http.response.start":
                status, elapsed = message["status"], time.perf_counter() - started
            await send(message)

        try:
            await self.app(scope, receive, timed)
        finally:
            route = scope.get("route")
            key = (getattr(route, "path", None) or "other", scope["method"], status)
            series = _SERIES.get(key)
            if series is None:  # bounded: route templates x methods x statuses
                template, method, _ = key
                series = _SERIES[key] = (
                    _REQUESTS.labels(template, method, str(status)),
                    _DURATION.labels(template, method),
                )
            series[0].inc()
            series[1].observe(time.perf_counter() - started if elapsed is None else elapsed)


async def metrics_response(client: aioredis.Redis, settings: ApiSettings) -> Response:
    """``GET /metrics``: this gateway's counters (all its processes'), then the queue's
    figures, read from Redis now."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        own = generate_latest(registry)
    else:
        own = generate_latest(REGISTRY)
    queue = CollectorRegistry()
    for family in await _queue_families(client, settings):
        queue.register(_Fixed(family))
    return Response(own + generate_latest(queue), media_type=CONTENT_TYPE_LATEST)


class _Fixed(Collector):
    """A collector of one family read before the scrape's serialization."""

    def __init__(self, family: GaugeMetricFamily) -> None:
        self._family = family

    def collect(self) -> list[GaugeMetricFamily]:
        return [self._family]


async def _queue_families(client: aioredis.Redis, settings: ApiSettings) -> list[GaugeMetricFamily]:
    workers = await live_workers(client)
    models = sorted({*settings.models, *(w.model for w in workers)})
    async with client.pipeline(transaction=False) as pipe:
        for model in models:
            for priority in range(PRIORITY_LEVELS):
                pipe.llen(queue_list(model, priority))
            pipe.zcard(model_queued_index(model))
            pipe.zrange(model_queued_index(model), 0, 0, withscores=True)
        pipe.zcard(status_index("running"))
        pipe.zcard(DEAD_LETTER)
        replies = await pipe.execute()
    now_ms = time.time() * 1000
    messages = GaugeMetricFamily(
        "structq_queue_messages",
        "Task messages in the model's queue lists, by priority (what workers pop).",
        labels=["model", "priority"],
    )
    depth = GaugeMetricFamily("structq_queue_jobs", "Jobs queued for the model.", labels=["model"])
    oldest = GaugeMetricFamily(
        "structq_queue_oldest_age_seconds",
        "Age of the model's oldest queued job (0: none).",
        labels=["model"],
    )
    position = 0
    for model in models:
        for priority in range(PRIORITY_LEVELS):
            messages.add_metric([model, str(priority)], float(replies[position]))
            position += 1
        depth.add_metric([model], float(replies[position]))
        position += 1
        first = cast(list[tuple[bytes, float]], replies[position])
        position += 1
        age = max(0.0, (now_ms - first[0][1]) / 1000) if first else 0.0
        oldest.add_metric([model], age)
    running = GaugeMetricFamily("structq_jobs_running", "Jobs running, all models.")
    running.add_metric([], float(replies[position]))
    dead = GaugeMetricFamily("structq_dead_letters", "Jobs in the dead-letter list.")
    dead.add_metric([], float(replies[position + 1]))
    live = GaugeMetricFamily(
        "structq_workers_live", "Workers whose heartbeat is current.", labels=["model"]
    )
    for model in models:
        live.add_metric([model], float(sum(w.model == model for w in workers)))
    return [depth, messages, oldest, running, live, dead]
