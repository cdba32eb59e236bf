"""The webhook worker: delivers job events, off the GPU workers (``python -m worker.webhooks``).

A GPU worker (or the gateway, or its janitor) only records that an event is due: the status
change that makes it due also stores a delivery (``structq:delivery:<id>``) and pushes a task
message onto ``structq.webhooks``, in the same Lua script. This worker, a light Celery worker
without vLLM (it runs on any CPU node), makes the attempts:

- one attempt per task: check the URL again (SSRF guard), POST the signed payload to the
  address just checked, record the attempt on the job (``webhook_deliveries``);
- 2xx: delivered. 4xx other than 408/429: given up at once. 3xx (never followed), 5xx, 408,
  429, a timeout or a connection error: retried after the next delay of
  STRUCTQ_WEBHOOK_SCHEDULE_S (with jitter; a longer ``Retry-After`` wins), until the schedule
  runs out;
- a retry waits in a Redis sorted set (``structq:webhooks:scheduled``) until due, and a
  scheduler thread moves it back onto the queue: retries survive restarts of this worker;
- a delivery already delivered (or given up) is never attempted again, so a re-delivered
  task message does not send it twice.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import threading
import time
from dataclasses import dataclass

import redis
from celery import Celery
from celery.signals import setup_logging, worker_init, worker_shutdown

from shared import logs
from shared.jobs import utcnow
from shared.keys import (
    WEBHOOK_QUEUE,
    WEBHOOK_TASK_NAME,
    WEBHOOK_WORKER_PREFIX,
    WEBHOOK_WORKER_TTL_S,
    WEBHOOKS_TRANSPORT,
)
from shared.metrics import serve as serve_metrics
from shared.records import WebhookWorkerAnnouncement
from shared.redis_pools import celery_broker, celery_silent_connection_options, sync_client
from worker.celery_config import reliable_threads_worker
from worker.settings import WebhookSettings
from worker.webhook_delivery import Deliverer

__all__ = ["app", "settings"]

log = logging.getLogger(__name__)

settings = WebhookSettings.load()

_TICK_S = 0.25

_broker, _transport = celery_broker(settings.redis_url)
app = Celery("structq-webhooks", broker=_broker)
app.conf.update(
    reliable_threads_worker(
        WEBHOOK_QUEUE,
        settings.webhook_concurrency,
        {
            **_transport,
            **celery_silent_connection_options(settings.redis_socket_timeout_s),
            # Attempts are short: a message unacknowledged past this is handed out again. Its
            # own unacked keys, so this short timeout never touches the GPU workers' messages.
            "visibility_timeout": int(3 * settings.webhook_timeout_s + 60),
            **WEBHOOKS_TRANSPORT,
        },
    )
)


@setup_logging.connect
def _setup_logging(**_: object) -> None:
    """Celery leaves the process's logging to this (``shared.logs``); done once, at
    ``worker_init``, which Celery sends first."""
    _setup_logs()


@functools.cache
def _setup_logs() -> None:
    logs.setup(settings.log_format, settings.log_level, worker=settings.webhook_worker_id)


@dataclass
class _Resident:
    """What the webhook worker process holds while it runs."""

    deliverer: Deliverer
    stop: threading.Event
    thread: threading.Thread


_resident: _Resident | None = None


@app.task(name=WEBHOOK_TASK_NAME, ignore_result=True)
def deliver_webhook(delivery_id: str) -> None:
    if _resident is None:
        raise RuntimeError("the webhook worker is not started in this process")
    _resident.deliverer.attempt(delivery_id)


def _scheduler(deliverer: Deliverer, client: redis.Redis, stop: threading.Event) -> None:
    """Moves due retries onto the queue, and keeps this worker's ready key alive."""
    ready_key = f"{WEBHOOK_WORKER_PREFIX}{settings.webhook_worker_id}"
    value = WebhookWorkerAnnouncement(
        worker_id=settings.webhook_worker_id, pid=os.getpid(), ready_at=utcnow()
    ).model_dump_json()
    renewed = 0.0
    while not stop.is_set():
        try:
            deliverer.move_due()
            if time.monotonic() - renewed > WEBHOOK_WORKER_TTL_S / 3:
                client.set(ready_key, value, ex=WEBHOOK_WORKER_TTL_S)
                renewed = time.monotonic()
        except Exception as exc:  # Redis away: try again next tick
            log.warning("webhook scheduler: %r", exc)
        stop.wait(_TICK_S)
    with contextlib.suppress(Exception):
        client.delete(ready_key)


@worker_init.connect
def _start(**_: object) -> None:
    _setup_logs()
    serve_metrics(settings.metrics_port)
    client = sync_client(
        settings.redis_url,
        max_connections=settings.webhook_concurrency + 4,
        socket_timeout_s=settings.redis_socket_timeout_s,
    )
    deliverer = Deliverer(client, settings)
    stop = threading.Event()
    thread = threading.Thread(
        target=_scheduler, args=(deliverer, client, stop), name="structq-webhook-scheduler"
    )
    thread.daemon = True
    thread.start()
    global _resident
    _resident = _Resident(deliverer, stop, thread)
    log.info("webhook worker ready; consuming %s", WEBHOOK_QUEUE)


@worker_shutdown.connect
def _stop(**_: object) -> None:
    global _resident
    resident, _resident = _resident, None
    if resident is not None:
        resident.stop.set()
        resident.thread.join(timeout=2)
        resident.deliverer.close()


def main() -> None:
    app.worker_main(
        [
            # No banner on stdout: the logs are one JSON object per line.
            *(["--quiet"] if settings.log_format == "json" else []),
            "worker",
            "--pool=threads",
            f"--concurrency={settings.webhook_concurrency}",
            f"--queues={WEBHOOK_QUEUE}",
            f"--hostname=structq-webhooks-{settings.webhook_worker_id}@%h",
            "--loglevel=INFO",
            "--without-gossip",
            "--without-mingle",
        ]
    )


if __name__ == "__main__":
    main()
