"""The webhook worker's Prometheus metrics (docs/observability.md), served on
STRUCTQ_METRICS_PORT by ``worker.webhooks``."""

from __future__ import annotations

from typing import get_args

from prometheus_client import Counter, Histogram

from shared.jobs import BatchWebhookEvent
from shared.metrics import LATENCY_BUCKETS

__all__ = ["attempted"]

_ATTEMPTS = Counter(
    "structq_webhook_attempts_total",
    "Delivery attempts, by event and outcome (retrying: a retry scheduled; gave_up: a give-up).",
    ["event", "outcome"],
)
_DURATION = Histogram(
    "structq_webhook_attempt_duration_seconds",
    "One attempt's request.",
    ["event"],
    buckets=LATENCY_BUCKETS,
)


# Every event's and outcome's series from 0, so that a rate sees its first attempt.
for _event in ("job.started", "job.completed", *get_args(BatchWebhookEvent)):
    _DURATION.labels(_event)
    for _outcome in ("delivered", "retrying", "gave_up"):
        _ATTEMPTS.labels(_event, _outcome)


def attempted(event: str, outcome: str, seconds: float) -> None:
    """One attempt of ``event`` (a job's ``started``/``completed``, or ``batch.<status>``)."""
    label = event if event.startswith("batch.") else f"job.{event}"
    _ATTEMPTS.labels(label, outcome).inc()
    _DURATION.labels(label).observe(seconds)
