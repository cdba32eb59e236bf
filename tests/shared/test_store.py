from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

from shared.jobs import Job, JobStatus
from shared.keys import job_key
from shared.store import AsyncJobStore, JobStore


def _create(redis_url: str, job: Job, queue: str) -> None:
    async def go() -> None:
        client = aioredis.from_url(redis_url)
        await AsyncJobStore(client, ttl_s=100).create(job, queue, "message")
        await client.aclose()

    asyncio.run(go())


def test_create_stores_the_job_and_its_message_together(redis_client, redis_url):
    job = Job(id="j1", model="m", prompt="x")
    _create(redis_url, job, "q")
    assert redis_client.hget(job_key("j1"), "status") == b"queued"
    assert 0 < redis_client.ttl(job_key("j1")) <= 100
    assert redis_client.lrange("q", 0, -1) == [b"message"]
    assert JobStore(redis_client, 100).get("j1") == job


def test_transition_applies_only_from_an_allowed_status(redis_client, redis_url):
    store = JobStore(redis_client, ttl_s=50)
    job = Job(id="j2", model="m", prompt="x")
    _create(redis_url, job, "q")

    running = job.model_copy(update={"status": JobStatus.RUNNING, "attempts": 1})
    assert store.transition(running, [JobStatus.QUEUED])
    assert store.get("j2") == running
    assert redis_client.hget(job_key("j2"), "status") == b"running"
    # A second claim of the same job loses: it is no longer queued.
    assert not store.transition(running, [JobStatus.QUEUED])

    done = running.model_copy(update={"status": JobStatus.SUCCEEDED})
    assert store.transition(done, [JobStatus.RUNNING])
    assert store.get("j2").status is JobStatus.SUCCEEDED
    assert redis_client.ttl(job_key("j2")) <= 50


def test_transition_of_a_missing_job_does_nothing(redis_client):
    store = JobStore(redis_client, ttl_s=50)
    assert not store.transition(Job(id="nope", model="m", prompt="x"), [JobStatus.QUEUED])
    assert not redis_client.exists(job_key("nope"))
