"""The job store's atomic scripts against a real Redis: creation with its message and indexes,
idempotency, caps per job of a batch, guarded transitions, re-queues, dead letters, deletion,
stale messages, taking messages as kombu does, the worker's ledger, and a full Redis refusing
a write as a whole."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
import redis
import redis.asyncio as aioredis

from shared import lifecycle
from shared.async_store import AsyncJobStore
from shared.jobs import DEFAULT_PRIORITY, Job, JobStatus
from shared.keys import (
    ALL_INDEX,
    DEAD_LETTER,
    DEADLINES,
    JOBS_TRANSPORT,
    bell_key,
    job_key,
    model_queued_index,
    queue_list,
    queue_lists,
    status_index,
    worker_jobs_key,
)
from shared.script_calls import NewJob
from shared.store import JobStore


def _run(redis_url: str, work):
    async def go():
        client = aioredis.from_url(redis_url)
        try:
            return await work(AsyncJobStore(client, ttl_s=100))
        finally:
            await client.aclose()

    return asyncio.run(go())


def _create(redis_url: str, job: Job, idempotency=None, caps=(0, 0)):
    new = [NewJob(job, idempotency)]
    return _run(redis_url, lambda store: store.create_many(new, caps, 60))[0]


def _job(job_id: str, **fields) -> Job:
    return Job(id=job_id, model="m", prompt="x", **fields)


def _ids(client: redis.Redis, key: str) -> list[str]:
    return [m.decode() for m in client.zrange(key, 0, -1)]


def _claim(store: JobStore, job_id: str, worker: str = "w1") -> lifecycle.Change:
    job = store.get(job_id)
    tag = store.redis.hget(job_key(job_id), "msg").decode()
    claim = lifecycle.claim(job, worker, tag)
    assert store.apply(claim)
    return claim


def test_create_stores_the_job_its_message_and_its_index_entries(redis_client, redis_url):
    job = _job("j1", priority=2)
    created = _create(redis_url, job)
    assert json.loads(created.record)["id"] == "j1"
    assert redis_client.hget(job_key("j1"), "status") == b"queued"
    assert 0 < redis_client.ttl(job_key("j1")) <= 100
    # The message is in the list of the job's priority, and only there; the doorbell rang.
    assert [redis_client.llen(name) for name in queue_lists("m")] == [0, 1, 0, 0]
    message = json.loads(redis_client.lindex(queue_list("m", 2), 0))
    assert message["headers"]["id"] == "j1"
    assert redis_client.llen(bell_key("m")) == 1
    assert _ids(redis_client, ALL_INDEX) == _ids(redis_client, status_index("queued")) == ["j1"]
    assert JobStore(redis_client, 100).get("j1") == job


def test_idempotency_key_returns_the_earlier_job_and_writes_nothing(redis_client, redis_url):
    first = _create(redis_url, _job("a"), ("client", "key-1", "hash-1"))
    second = _create(redis_url, _job("b"), ("client", "key-1", "hash-1"))
    other_client = _create(redis_url, _job("c"), ("other", "key-1", "hash-1"))
    assert first.record is not None and other_client.record is not None
    assert (second.record, second.earlier_id, second.earlier_hash) == (None, "a", "hash-1")
    assert not redis_client.exists(job_key("b"))
    assert sum(redis_client.llen(name) for name in queue_lists("m")) == 2


def test_a_batch_is_stored_job_by_job_with_the_caps_counted_as_it_goes(redis_client, redis_url):
    jobs = [
        NewJob(_job("b1", client="k")),
        NewJob(_job("b2", client="k"), ("k", "same", "h")),
        NewJob(_job("b3", client="k"), ("k", "same", "h")),  # the key b2 just took
        NewJob(_job("b4", client="k")),  # past the per-key cap of 2
    ]
    created = _run(redis_url, lambda store: store.create_many(jobs, (2, 0), 60))
    assert [c.record is not None for c in created] == [True, True, False, False]
    assert created[2].earlier_id == "b2"
    assert created[3].refused == ("queued_per_client", 2)
    assert not redis_client.exists(job_key("b3")) and not redis_client.exists(job_key("b4"))
    assert _ids(redis_client, model_queued_index("m")) == ["b1", "b2"]
    assert sum(redis_client.llen(name) for name in queue_lists("m")) == 2


def test_claim_and_finish_are_guarded_by_status_and_run(redis_client, redis_url):
    store = JobStore(redis_client, ttl_s=50)
    _create(redis_url, _job("j2"))
    claim = _claim(store, "j2")
    status, run, owner = redis_client.hmget(job_key("j2"), ["status", "run", "owner"])
    assert (status, run.decode(), owner) == (b"running", claim.new_run, b"w1")
    assert redis_client.hgetall(worker_jobs_key("w1")) == {b"j2": run}
    # A second claim of the same message is a replay of this one: applied, nothing more.
    assert store.apply(claim)
    # Another claim loses: the job is no longer queued.
    assert not store.apply(lifecycle.claim(store.get("j2"), "w2", "j2"))
    # The janitor gives run 1 up (its worker vanished): run 1's late result must not land.
    assert store.apply(lifecycle.requeue(claim.job, claim.new_run))
    assert redis_client.hgetall(worker_jobs_key("w1")) == {}
    second = _claim(store, "j2", "w2")
    assert not store.apply(lifecycle.finish(claim.job, claim.new_run, status=JobStatus.SUCCEEDED))
    assert store.apply(lifecycle.finish(second.job, second.new_run, status=JobStatus.SUCCEEDED))
    done = store.get("j2")
    assert (done.status, done.attempts, done.worker) == (JobStatus.SUCCEEDED, 2, "w2")
    assert _ids(redis_client, status_index("succeeded")) == ["j2"]
    assert _ids(redis_client, status_index("running")) == []
    assert redis_client.hgetall(worker_jobs_key("w2")) == {}


def test_a_stale_copy_of_a_message_claims_nothing(redis_client, redis_url):
    store = JobStore(redis_client, ttl_s=50)
    _create(redis_url, _job("s1"))
    claim = _claim(store, "s1")
    requeued = lifecycle.requeue(claim.job, claim.new_run)
    assert store.apply(requeued)
    assert requeued.message is not None
    # The first message (tag "s1") comes round again: it is not the job's message any more.
    assert not store.apply(lifecycle.claim(store.get("s1"), "w", "s1"))
    assert store.apply(lifecycle.claim(store.get("s1"), "w", requeued.message.tag))


def test_requeue_pushes_a_fresh_message_and_deadline_entry(redis_client, redis_url):
    store = JobStore(redis_client, ttl_s=50)
    job = _job("j3", timeout_s=30)
    _create(redis_url, job.model_copy(update={"deadline": job.created_at.replace(year=2999)}))
    claim = _claim(store, "j3")
    assert _ids(redis_client, DEADLINES) == []
    assert redis_client.rpop(queue_list("m", DEFAULT_PRIORITY))  # the worker took the first message
    assert store.apply(lifecycle.requeue(claim.job, claim.new_run, give_back=True))
    message = json.loads(redis_client.lindex(queue_list("m", DEFAULT_PRIORITY), 0))
    assert message["headers"]["id"].startswith("j3~")  # unique among messages in flight
    assert store.get("j3").attempts == 0  # a drained run is given back
    assert _ids(redis_client, DEADLINES) == ["j3"]


def test_dead_letter_after_max_attempts_and_retry_takes_it_out(redis_client, redis_url):
    store = JobStore(redis_client, ttl_s=50)
    _create(redis_url, _job("j4"))
    for _ in range(2):
        claim = _claim(store, "j4")
        assert store.apply(lifecycle.fail_or_requeue(claim.job, claim.new_run, 2, "worker died"))
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
    left = [
        json.loads(m)["headers"]["id"]
        for m in redis_client.lrange(queue_list("m", DEFAULT_PRIORITY), 0, -1)
    ]
    assert left == ["keep"]


def test_take_registers_messages_as_kombu_does_and_the_claim_acknowledges(redis_client, redis_url):
    from kombu import Connection

    from worker.app import celery_config
    from worker.settings import WorkerSettings

    transport = celery_config(WorkerSettings(model="m"))["broker_transport_options"]
    _create(redis_url, _job("low"))
    _create(redis_url, _job("high", priority=3))
    store = JobStore(redis_client, ttl_s=50)
    taken = store.take("m", 5)
    assert [tag for tag, _ in taken] == ["high", "low"]  # highest priority first
    assert all(row.status == b"queued" and row.spec is not None for _, row in taken)
    unacked, index = JOBS_TRANSPORT["unacked_key"], JOBS_TRANSPORT["unacked_index_key"]
    assert _ids(redis_client, index) == ["high", "low"] or _ids(redis_client, index) == [
        "low",
        "high",
    ]
    # Kombu can restore a taken message exactly as it restores its own (visibility timeout).
    with Connection(redis_url, transport_options=transport) as conn:
        channel = conn.default_channel
        channel.qos.restore_by_tag("low")
    assert (
        json.loads(redis_client.lindex(queue_list("m", DEFAULT_PRIORITY), 0))["headers"]["id"]
        == "low"
    )
    assert not redis_client.hexists(unacked, "low")
    # Claiming acknowledges: the message leaves kombu's unacknowledged hash.
    tag, row = taken[0]
    job = Job.from_parts(row.spec, row.state)
    assert store.apply(lifecycle.claim(job, "w", tag))
    assert not redis_client.hexists(unacked, "high")
    assert redis_client.zscore(index, "high") is None


def test_reenqueue_only_a_message_that_is_really_lost(redis_client, redis_url):
    store = JobStore(redis_client, ttl_s=50)
    _create(redis_url, _job("r1"))
    assert store.take("m", 1)  # taken just now, and its consumer lives: not lost
    job = store.get("r1")
    long_ago = int((time.time() - 60) * 1000)
    assert store.apply_many([lifecycle.reenqueue(job, "r1", long_ago)]) == ["held"]
    # Taken a minute ago by a consumer that never claimed it: a fresh message, once.
    redis_client.zadd(JOBS_TRANSPORT["unacked_index_key"], {"r1": time.time() - 120})
    fresh = lifecycle.reenqueue(job, "r1", long_ago)
    assert store.apply(fresh)
    assert not store.apply(lifecycle.reenqueue(job, "r1", long_ago))  # no longer its message
    assert fresh.message is not None
    assert redis_client.hget(job_key("r1"), "msg").decode() == fresh.message.tag
    assert not redis_client.hexists(JOBS_TRANSPORT["unacked_key"], "r1")
    assert store.get("r1").status is JobStatus.QUEUED


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
    assert not store.apply(lifecycle.Change(_job("nope"), (JobStatus.QUEUED,)))
    assert not redis_client.exists(job_key("nope"))


def test_a_requeue_unless_alive_is_refused_while_the_workers_heartbeat_exists(
    redis_client, redis_url
):
    import dataclasses

    from shared.keys import worker_key

    store = JobStore(redis_client, ttl_s=50)
    _create(redis_url, _job("a1"))
    claim = _claim(store, "a1")
    requeue = dataclasses.replace(lifecycle.requeue(claim.job, claim.new_run), unless_alive="w1")
    redis_client.set(worker_key("w1"), "{}")  # the worker announced itself again
    assert store.apply_many([requeue]) == ["alive"]
    assert store.get("a1").status is JobStatus.RUNNING
    assert redis_client.hgetall(worker_jobs_key("w1")) == {b"a1": claim.new_run.encode()}
    redis_client.delete(worker_key("w1"))  # gone: the janitor's re-queue goes through
    assert store.apply_many([requeue]) == [None]
    assert store.get("a1").status is JobStatus.QUEUED


def test_a_claim_if_alive_is_refused_while_the_workers_heartbeat_is_absent(redis_client):
    import dataclasses

    from shared.keys import worker_key

    store = JobStore(redis_client, ttl_s=50)
    store.create(Job(id="c1", model="m", prompt="x"))
    [(tag, row)] = store.take("m", 10)
    claim = dataclasses.replace(
        lifecycle.claim(store.get("c1"), "w1", tag), release=tag, if_alive="w1"
    )
    assert store.apply_many([claim]) == ["cut_off"]  # no heartbeat: nothing claimed...
    assert store.get("c1").status is JobStatus.QUEUED
    assert not redis_client.exists(worker_jobs_key("w1"))
    assert redis_client.hexists(JOBS_TRANSPORT["unacked_key"], tag)  # ...its message kept
    redis_client.set(worker_key("w1"), "{}")  # announced again: the same claim goes through
    assert store.apply_many([claim]) == [None]
    assert store.get("c1").status is JobStatus.RUNNING
    assert not redis_client.hexists(JOBS_TRANSPORT["unacked_key"], tag)
    with pytest.raises(ValueError, match="one worker"):
        store.apply_many([dataclasses.replace(claim, unless_alive="w1")])
