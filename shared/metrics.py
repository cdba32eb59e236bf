"""What every structq process's Prometheus metrics share (the metrics themselves: the gateway's
in ``api.metrics``, the workers' in ``worker.metrics`` and ``worker.webhook_metrics``; all of
them in docs/observability.md)."""

from __future__ import annotations

import logging

from prometheus_client import start_http_server

__all__ = ["LATENCY_BUCKETS", "serve"]

log = logging.getLogger(__name__)

# Seconds: from a few ms (a short job on a GPU, a request) to a long queue wait.
LATENCY_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0,
)  # fmt: skip


def serve(port: int) -> None:
    """Serve this process's metrics (prometheus-client's default registry) on ``port``, in a
    thread (0: not at all). A port already taken is logged, not fatal: the process runs on
    without its metrics."""
    if port == 0:
        return
    try:
        start_http_server(port)
    except OSError as exc:
        log.warning("metrics not served: port %d: %s", port, exc)
        return
    log.info("metrics on :%d/metrics", port)
