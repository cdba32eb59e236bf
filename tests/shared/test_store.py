"""The job store's atomic scripts against a real Redis: creation with its message and indexes,
idempotency, guarded transitions, re-queues, dead letters, deletion, stale messages, and a
full Redis refusing a write as a whole."""

from __future__ import annotations

import asyncio
import json

import pytest
import redis
import redis.asyncio as aioredis

from shared import lifecycle
from shared.jobs import Job, JobStatus
from shared.keys import (
    ALL_INDEX,
    DEAD_LETTER,
    DEADLINES,
    job_key,
    queue_list,
    queue_lists,
    status_index,
)
from shared.store import AsyncJobStore, Change, JobStore


def _run(redis_url: str, work):
    async def go():
        client = aioredis.from_url(redis_url)
        try:
            return await work(AsyncJobStore(client, ttl_s=100))
        finally:
            await client.aclose()

    return asyncio.run(go())


def _create(redis_url: str, job: Job, idempotency=None):
    where, message = lifecycle.enqueue_message(job)
    return _run(redis_url, lambda store: store.create(job, where, message, idempotency))


def _job(job_id: str, **fields) -> Job:
    return Job(id=job_id, model="m", prompt="x", **fields)


def _ids(client: redis.Redis, key: str) -> list[str]:
    return [m.decode() for m in client.zrange(key, 0, -1)]


def test_create_stores_the_job_its_message_and_its_index_entries(redis_client, redis_url):
    job = _job("j1", priority=2)
    created = _create(redis_url, job)
    assert json.loads(created.record)["id"] == "j1"
    assert redis_client.hget(job_key("j1"), "status") == b"queued"
    assert 0 < redis_client.ttl(job_key("j1")) <= 100
    # The message is in the list of the job's priority, and only there.
    assert [redis_client.llen(name) for name in queue_lists("m")] == [0, 1, 0, 0]
    message = json.loads(redis_client.lindex(queue_list("m", 2), 0))
    assert message["headers"]["id"] == "j1"
    assert _ids(redis_client, ALL_INDEX) == _ids(redis_client, status_index("queued")) == ["j1"]
    assert JobStore(redis_client, 100).get("j1") == job


def test_idempotency_key_returns_the_earlier_job_and_writes_nothing(redis_client, redis_url):
    first = _create(redis_url, _job("a"), ("client", "key-1", "hash-1", 60))
    second = _create(redis_url, _job("b"), ("client", "key-1", "hash-1", 60))
    other_client = _create(redis_url, _job("c"), ("other", "key-1", "hash-1", 60))
    assert first.record is not None and other_client.record is not None
    assert (second.record, second.earlier_id, second.earlier_hash) == (None, "a", "hash-1")
    assert not redis_client.exists(job_key("b"))
    assert sum(redis_client.llen(name) for name in queue_lists("m")) == 2


def test_claim_and_finish_are_guarded_by_status_and_run(redis_client, redis_url):
    store = JobStore(redis_client, ttl_s=50)
    _create(redis_url, _job("j2"))
    claim = lifecycle.claim(store.get("j2"), "w1")
    assert store.apply(claim)
    assert redis_client.hmget(job_key("j2"), ["status", "run", "owner"]) == [
        b"running",
        b"1",
        b"w1",
    ]
    assert not store.apply(claim)  # a second claim loses: the job is no longer queued
    # The janitor gives run 1 up (its worker vanished): run 1's late result must not land.
    assert store.apply(lifecycle.requeue(claim.job))
    second = lifecycle.claim(store.get("j2"), "w2")
    assert store.apply(second)
    assert not store.apply(lifecycle.finish(claim.job, status=JobStatus.SUCCEEDED))
    assert store.apply(lifecycle.finish(second.job, status=JobStatus.SUCCEEDED))
    done = store.get("j2")
    assert (done.status, done.attempts, done.worker) == (JobStatus.SUCCEEDED, 2, "w2")
    assert _ids(redis_client, status_index("succeeded")) == ["j2"]
    assert _ids(redis_client, status_index("running")) == []


def test_requeue_pushes_a_fresh_message_and_deadline_entry(redis_client, redis_url):
    store = JobStore(redis_client, ttl_s=50)
    _create(redis_url, _job("j3", timeout_s=30).model_copy(update={"deadline": None}))
    claim = lifecycle.claim(store.get("j3"), "w1")
    store.apply(claim)
    assert redis_client.rpop(queue_list("m", 0))  # the worker took the first message
    assert store.apply(lifecycle.requeue(claim.job, give_back=True))
    message = json.loads(redis_client.lindex(queue_list("m", 0), 0))
    assert message["headers"]["id"].startswith("j3~")  # unique among messages in flight
    assert store.get("j3").attempts == 0  # a drained run is given back


def test_dead_letter_after_max_attempts_and_retry_takes_it_out(redis_client, redis_url):
    store = JobStore(redis_client, ttl_s=50)
    _create(redis_url, _job("j4"))
    for _ in range(2):
        claim = lifecycle.claim(store.get("j4"), "w")
        store.apply(claim)
        assert store.apply(lifecycle.fail_or_requeue(claim.job, 2, "worker died"))
    failed = store.get("j4")
    assert failed.status is JobStatus.FAILED
    assert failed.error.code == "max_attempts_exceeded"
    assert _ids(redis_client, DEAD_LETTER) == ["j4"]
    assert store.apply(lifecycle.retry(failed))
    again = store.get("j4")
    assert (again.status, again.attempts, again.retries) == (JobStatus.QUEUED, 0, 1)
    assert _ids(redis_client, DEAD_LETTER) == []


def test_deadline_index_follows_the_queued_status(redis_client, redis_url):
    store = JobStore(redis_client, ttl_s=50)
    job = _job("j5", timeout_s=10)
    job = job.model_copy(update={"deadline": job.created_at})
    _create(redis_url, job)
    assert _ids(redis_client, DEADLINES) == ["j5"]
    assert store.apply(lifecycle.expire(store.get("j5")))
    assert store.get("j5").status is JobStatus.EXPIRED
    assert _ids(redis_client, DEADLINES) == []


def test_delete_only_finished_jobs(redis_client, redis_url):
    _create(redis_url, _job("j6"))
    assert _run(redis_url, lambda store: store.delete("j6")) == "queued"
    JobStore(redis_client, 50).apply(lifecycle.cancel_queued(_job("j6"), "test"))
    assert _run(redis_url, lambda store: store.delete("j6")) is None
    assert not redis_client.exists(job_key("j6"))
    assert _ids(redis_client, ALL_INDEX) == []
    assert _run(redis_url, lambda store: store.delete("j6")) == ""


def test_stale_messages_are_dropped(redis_client, redis_url):
    _create(redis_url, _job("keep"))
    _create(redis_url, _job("gone"))
    JobStore(redis_client, 50).apply(lifecycle.cancel_queued(_job("gone"), "test"))
    assert _run(redis_url, lambda store: store.drop_stale_messages(queue_lists("m"))) == 1
    left = [json.loads(m)["headers"]["id"] for m in redis_client.lrange(queue_list("m", 0), 0, -1)]
    assert left == ["keep"]


def test_a_full_redis_refuses_a_job_as_a_whole(redis_client, redis_url):
    redis_client.config_set("maxmemory", "1")  # far below what it uses: every write is OOM
    try:
        with pytest.raises(redis.exceptions.OutOfMemoryError, match="maxmemory"):
            _create(redis_url, _job("full"))
    finally:
        redis_client.config_set("maxmemory", "0")
    assert not redis_client.exists(job_key("full"))
    assert redis_client.zcard(ALL_INDEX) == 0
    assert sum(redis_client.llen(name) for name in queue_lists("m")) == 0


def test_change_of_a_missing_job_does_nothing(redis_client):
    store = JobStore(redis_client, ttl_s=50)
    assert not store.apply(Change(_job("nope"), (JobStatus.QUEUED,)))
    assert not redis_client.exists(job_key("nope"))


def test_a_record_the_worker_cannot_read_fails_at_once_instead_of_staying_queued(
    redis_client, redis_url
):
    from worker.runner import JobRunner
    from worker.settings import WorkerSettings

    _create(redis_url, _job("new"))
    # As a newer gateway might write it: a field this worker's Job does not know.
    record = json.loads(redis_client.hget(job_key("new"), "job"))
    redis_client.hset(job_key("new"), "job", json.dumps({**record, "from_the_future": 1}))
    store = JobStore(redis_client, 100)
    runner = JobRunner(store, engine=None, settings=WorkerSettings(worker_id="w"))  # type: ignore[arg-type]
    runner.run("new")
    job = store.get("new")
    assert job.status == "failed" and job.error.code == "unreadable_job"
    assert "from_the_future" in job.error.message
