"""The dispatcher on its own (no engine): what it does with a job it cannot run."""

from __future__ import annotations

from typing import cast

from shared.jobs import Job
from worker.engine import Engine


class _NoEngine:
    """The runner's engine in a test that never reaches it."""

    alive = True

    def submit(self, requests):
        assert not requests, "nothing here should reach the engine"


def test_a_record_the_worker_cannot_read_fails_at_once_instead_of_staying_queued(
    redis_client,
):
    import json

    from shared.keys import job_key
    from shared.store import JobStore
    from worker.runner import JobRunner
    from worker.settings import WorkerSettings

    store = JobStore(redis_client, 100)
    store.create(Job(id="new", model="m", prompt="x"))
    # As a newer gateway might write it: a field this worker's Job does not know.
    spec = json.loads(redis_client.hget(job_key("new"), "spec"))
    redis_client.hset(job_key("new"), "spec", json.dumps({**spec, "from_the_future": 1}))
    engine = cast(Engine, _NoEngine())  # a stand-in: only what this path calls
    runner = JobRunner(store, engine, WorkerSettings(worker_id="w", model="m"))
    runner._claim(store.take("m", 10))
    job = store.get("new")
    assert job.status == "failed" and job.error.code == "unreadable_job"
    assert "from_the_future" in job.error.message
