"""The Celery settings both structq workers share: the GPU worker (``worker.app``) and the
webhook worker (``worker.webhooks``). Each adds its queue, concurrency and transport options."""

from __future__ import annotations

from typing import Any

__all__ = ["reliable_threads_worker"]


def reliable_threads_worker(
    queue: str, concurrency: int, transport: dict[str, Any]
) -> dict[str, Any]:
    """A threads-pool worker of ``queue`` that loses no task message: acknowledged only once
    the task has run, given back if the process dies, and no more reserved than it runs."""
    return dict(
        task_default_queue=queue,
        task_ignore_result=True,
        # A message is acknowledged once its task has run, not when it is received...
        task_acks_late=True,
        # ...and given back if the worker process dies under it.
        task_reject_on_worker_lost=True,
        # At most one reserved message per task thread: a worker takes no more than it runs
        # at once, so the rest stay in the queue for other workers (and autoscalers).
        worker_prefetch_multiplier=1,
        worker_pool="threads",
        worker_concurrency=concurrency,
        broker_connection_retry_on_startup=True,
        broker_transport_options=transport,
        # Celery reads the visibility timeout here too: keep the two equal.
        result_backend_transport_options={"visibility_timeout": transport["visibility_timeout"]},
        worker_hijack_root_logger=False,
    )
