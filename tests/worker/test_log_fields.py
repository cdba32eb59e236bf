"""The worker's and the webhook worker's log lines about a job carry its id, model, worker and
the request id that submitted it (``shared.logs.job_fields``), so one grep follows it."""

from __future__ import annotations

import io
import json
import logging
import time
from typing import cast

from scripts.receiver import Receiver
from shared import lifecycle, logs
from shared.jobs import Job, WebhookSpec
from shared.keys import WEBHOOK_QUEUE
from shared.store import JobStore
from worker.engine import Engine
from worker.settings import WebhookSettings, WorkerSettings
from worker.webhook_delivery import Deliverer


def test_a_line_built_with_job_fields_carries_the_job_and_its_request_id():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.make_formatter("json"))
    handler.addFilter(logs.ContextFilter({"worker": "w-static", "model": "m"}))
    log = logging.getLogger("structq.test.worker")
    log.addHandler(handler)
    log.propagate = False
    try:
        job = Job(id="j-1", model="m", prompt="x", worker="w-1", request_id="req-1")
        log.warning("job %s is late", job.id, extra=logs.job_fields(job))
    finally:
        log.removeHandler(handler)
        log.propagate = True
    line = json.loads(stream.getvalue())
    assert line["message"] == "job j-1 is late" and line["level"] == "WARNING"
    assert (line["job_id"], line["request_id"], line["worker"], line["model"]) == (
        "j-1",
        "req-1",
        "w-1",  # the job's own worker wins over the process's
        "m",
    )


class _Engine:
    """Takes requests and runs none of them."""

    alive = True

    def submit(self, requests):
        pass

    def render_chat(self, messages):
        raise AssertionError("prompt jobs only")


def test_the_runners_job_lines_carry_the_request_id(redis_client, caplog):
    from worker.runner import JobRunner

    store = JobStore(redis_client, 100)
    store.create(Job(id="lost", model="m", prompt="x", request_id="req-lost"))
    settings = WorkerSettings(worker_id="w", model="m")
    engine = cast(Engine, _Engine())
    JobRunner(store, engine, settings)._claim(store.take("m", 10))
    # The same worker, restarted: Redis says it runs the job, it does not.
    with caplog.at_level(logging.WARNING, logger="worker.runner"):
        JobRunner(store, engine, settings)._check_ledger()
    [record] = [r for r in caplog.records if "not running here" in r.getMessage()]
    assert (record.job_id, record.request_id, record.worker, record.model) == (
        "lost",
        "req-lost",
        "w",
        "m",
    )


def test_the_webhook_attempt_line_carries_the_request_id(redis_client, redis_url, caplog):
    with Receiver() as receiver:
        job = Job(
            id=f"j-{time.monotonic_ns()}",
            model="m",
            prompt="x",
            request_id="req-hook",
            webhook=WebhookSpec(url=receiver.url("/ok")),
        )
        redis_client.hset(f"structq:job:{job.id}", mapping={"status": "queued", "job": "{}"})
        assert JobStore(redis_client, ttl_s=60).apply(lifecycle.cancel_queued(job, "test"))
        delivery_id = json.loads(redis_client.rpop(WEBHOOK_QUEUE))["headers"]["id"]
        settings = WebhookSettings(
            redis_url=redis_url,
            webhook_secret="whsec_" + "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
            webhook_allowed_networks=["127.0.0.0/8"],
        )
        with caplog.at_level(logging.INFO, logger="worker.webhook_delivery"):
            assert Deliverer(redis_client, settings).attempt(delivery_id) == "delivered"
    [record] = [r for r in caplog.records if "attempt 1" in r.getMessage()]
    assert (record.job_id, record.request_id, record.model) == (job.id, "req-hook", "m")
