"""Waiting on jobs, against a real Redis (a test plays the worker): long-polls (``GET
/v1/jobs/{id}?wait=``, ``Prefer: wait``) and cancelling a running job, which waits for it to
stop."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis
from fastapi.testclient import TestClient

from api.main import create_app
from api.settings import ApiSettings
from shared import lifecycle
from shared.jobs import JobStatus
from shared.keys import JOB_PREFIX
from shared.store import JobStore


@pytest.fixture
def client(redis_client: redis.Redis, redis_url: str) -> Iterator[TestClient]:
    settings = ApiSettings(insecure_no_auth=True, redis_url=redis_url, max_tokens_limit=512)
    with TestClient(create_app(settings)) as client:
        yield client


def _run_then_end(redis_client: redis.Redis, job_id: str, status: str, after_s: float) -> float:
    """Play the worker: claim ``job_id``, then after ``after_s`` end it in ``status``; when."""

    store = JobStore(redis_client, ttl_s=100)
    tag = redis_client.hget(JOB_PREFIX + job_id, "msg")  # its current task message
    claim = lifecycle.claim(store.get(job_id), "w", tag=tag.decode())
    assert store.apply(claim)
    time.sleep(after_s)
    assert store.apply(lifecycle.finish(claim.job, claim.new_run, status=JobStatus(status)))
    return time.monotonic()


def _stored_job_id(redis_client: redis.Redis, timeout_s: float = 10) -> str:
    """The id of the one job stored (waiting for it to be)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        keys = list(redis_client.scan_iter(f"{JOB_PREFIX}*"))
        if keys:
            return keys[0].decode().removeprefix(JOB_PREFIX)
        time.sleep(0.01)
    raise AssertionError("no job was stored")


def test_prefer_wait_answers_when_the_job_finishes(client, redis_client):
    def finish_later() -> float:
        return _run_then_end(redis_client, _stored_job_id(redis_client), "failed", 0.5)

    with ThreadPoolExecutor(1) as pool:
        finished = pool.submit(finish_later)
        response = client.post("/v1/jobs", json={"prompt": "x"}, headers={"Prefer": "wait=20"})
        answered = time.monotonic()
    assert response.status_code == 202
    assert response.json()["status"] == "failed"
    assert response.headers["preference-applied"] == "wait=20"
    assert response.headers["location"] == f"/v1/jobs/{response.json()['id']}"
    assert answered - finished.result() < 0.1


def test_prefer_wait_times_out_with_the_job_as_it_is(client):
    started = time.monotonic()
    response = client.post("/v1/jobs", json={"prompt": "x"}, headers={"Prefer": "wait=0.3"})
    assert time.monotonic() - started >= 0.3
    assert response.status_code == 202
    assert response.json()["status"] == "queued"
    assert response.headers["preference-applied"] == "wait=0.3"


@pytest.mark.parametrize("prefer", ["wait=soon", "respond-async", "", "wait=-3"])
def test_no_usable_wait_preference_answers_at_once(client, prefer):
    response = client.post("/v1/jobs", json={"prompt": "x"}, headers={"Prefer": prefer})
    assert response.status_code == 202
    assert response.json()["status"] == "queued"
    assert "preference-applied" not in response.headers


def test_prefer_wait_on_an_earlier_idempotent_job_waits_for_that_job(client, redis_client):
    headers = {"Idempotency-Key": "k1"}
    job_id = client.post("/v1/jobs", json={"prompt": "x"}, headers=headers).json()["id"]
    _run_then_end(redis_client, job_id, "succeeded", 0)
    again = client.post("/v1/jobs", json={"prompt": "x"}, headers={**headers, "Prefer": "wait=20"})
    assert again.status_code == 200
    assert again.json()["id"] == job_id
    assert again.json()["status"] == "succeeded"
    assert again.headers["preference-applied"] == "wait=20"


def test_long_poll_of_a_finished_job_answers_at_once(client, redis_client):
    job_id = client.post("/v1/jobs", json={"prompt": "x"}).json()["id"]
    _run_then_end(redis_client, job_id, "failed", 0)
    started = time.monotonic()
    response = client.get(f"/v1/jobs/{job_id}", params={"wait": 20})
    assert time.monotonic() - started < 1
    assert response.json()["status"] == "failed"


def test_long_poll_of_an_unknown_job_is_404(client):
    response = client.get("/v1/jobs/does-not-exist", params={"wait": 20})
    assert response.status_code == 404


@pytest.fixture
def quick_cancel_client(redis_client: redis.Redis, redis_url: str) -> Iterator[TestClient]:
    settings = ApiSettings(insecure_no_auth=True, redis_url=redis_url, cancel_wait_s=0.3)
    with TestClient(create_app(settings)) as client:
        yield client


def test_cancel_of_a_running_job_that_does_not_stop_is_202(quick_cancel_client, redis_client):

    client = quick_cancel_client
    job_id = client.post("/v1/jobs", json={"prompt": "x"}).json()["id"]
    store = JobStore(redis_client, ttl_s=100)
    assert store.apply(lifecycle.claim(store.get(job_id), "w", tag=job_id))
    started = time.monotonic()
    response = client.post(f"/v1/jobs/{job_id}/cancel")
    assert time.monotonic() - started >= 0.3
    assert response.status_code == 202
    assert response.json()["status"] == "running"


def test_cancel_of_a_running_job_answers_once_it_stopped(client, redis_client):
    job_id = client.post("/v1/jobs", json={"prompt": "x"}).json()["id"]
    with ThreadPoolExecutor(1) as pool:
        stopped = pool.submit(_run_then_end, redis_client, job_id, "cancelled", 0.5)
        deadline = time.monotonic() + 10
        while redis_client.hget(JOB_PREFIX + job_id, "status") != b"running":
            assert time.monotonic() < deadline, "the job was not claimed"
            time.sleep(0.01)
        response = client.post(f"/v1/jobs/{job_id}/cancel")
        answered = time.monotonic()
    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"
    assert answered - stopped.result() < 0.1
    assert client.post(f"/v1/jobs/{job_id}/cancel").status_code == 200  # the same answer again


def test_a_finished_job_cannot_be_cancelled_and_a_cancelled_one_can_be_retried(
    client, redis_client
):
    job_id = client.post("/v1/jobs", json={"prompt": "x"}).json()["id"]
    assert client.post(f"/v1/jobs/{job_id}/retry").status_code == 409  # queued
    assert client.post(f"/v1/jobs/{job_id}/cancel").json()["status"] == "cancelled"
    retried = client.post(f"/v1/jobs/{job_id}/retry")
    assert retried.status_code == 202
    assert retried.json()["status"] == "queued"
    _run_then_end(redis_client, job_id, "succeeded", 0)
    refused = client.post(f"/v1/jobs/{job_id}/cancel")
    assert refused.status_code == 409
    assert refused.json()["error"] == {
        "code": "conflict",
        "message": f"job {job_id} has already finished: succeeded",
        "status": "succeeded",
    }


def test_long_poll_wakes_when_the_job_finishes(client, redis_client):

    job_id = client.post("/v1/jobs", json={"prompt": "x"}).json()["id"]
    store = JobStore(redis_client, ttl_s=100)

    def finish_later() -> float:
        time.sleep(0.5)
        claim = lifecycle.claim(store.get(job_id), "w", tag=job_id)
        assert store.apply(claim)
        assert store.apply(lifecycle.finish(claim.job, claim.new_run, status=JobStatus.FAILED))
        return time.monotonic()

    with ThreadPoolExecutor(1) as pool:
        finished = pool.submit(finish_later)
        response = client.get(f"/v1/jobs/{job_id}", params={"wait": 20})
        answered = time.monotonic()
    assert response.json()["status"] == "failed"
    assert answered - finished.result() < 0.1


def test_long_poll_times_out_with_the_job_as_it_is(client):
    job_id = client.post("/v1/jobs", json={"prompt": "x"}).json()["id"]
    started = time.monotonic()
    response = client.get(f"/v1/jobs/{job_id}", params={"wait": 0.3})
    assert response.json()["status"] == "queued"
    assert time.monotonic() - started >= 0.3


@pytest.mark.parametrize("wait", [-1, 61, "soon"])
def test_long_poll_wait_is_bounded(client, wait):
    job_id = client.post("/v1/jobs", json={"prompt": "x"}).json()["id"]
    response = client.get(f"/v1/jobs/{job_id}", params={"wait": wait})
    assert response.status_code == 422
    assert "wait" in response.json()["error"]["message"]
