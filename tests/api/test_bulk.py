"""``POST /v1/jobs/batch`` and ``POST /v1/jobs/wait`` against a real Redis (no worker): per-item
results, nothing half-stored, idempotency keys per item, caps, and waiting for many."""

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
from shared.keys import JOB_PREFIX, job_key, queue_lists
from shared.settings import DEFAULT_MODEL
from shared.store import JobStore


@pytest.fixture
def client(redis_client: redis.Redis, redis_url: str) -> Iterator[TestClient]:
    settings = ApiSettings(
        insecure_no_auth=True, redis_url=redis_url, max_tokens_limit=512, max_queue_depth=6
    )
    with TestClient(create_app(settings)) as client:
        yield client


def _messages(redis_client: redis.Redis) -> int:
    return sum(redis_client.llen(name) for name in queue_lists(DEFAULT_MODEL))


def _stored(redis_client: redis.Redis) -> int:
    return len(list(redis_client.scan_iter(f"{JOB_PREFIX}*")))


def test_good_and_bad_bodies_get_their_own_answers_and_only_the_good_are_stored(
    client, redis_client
):
    jobs = [
        {"prompt": "one"},
        {"prompt": "two", "output_type": {"type": "regex", "pattern": "(unclosed"}},
        {"messages": []},
        {"prompt": "four", "sampling": {"max_tokens": 10_000}},
        {"prompt": "five", "model": "nope"},
        {"prompt": "six", "output_type": {"type": "choice", "choices": ["a", "b"]}},
        {"prompt": "seven", "surprise": True},
    ]
    response = client.post("/v1/jobs/batch", json={"jobs": jobs})
    assert response.status_code == 200, response.text
    body = response.json()
    assert [row["index"] for row in body["data"]] == list(range(len(jobs)))
    assert [row["status"] for row in body["data"]] == [202, 422, 422, 422, 404, 202, 422]
    assert (body["submitted"], body["refused"]) == (2, 5)
    # Each refusal says what a single POST /v1/jobs of that body would have said.
    for index, row in enumerate(body["data"]):
        if row["status"] != 422:
            continue
        single = client.post("/v1/jobs", json=jobs[index])
        assert single.status_code == 422
        assert row["error"] == single.json()["error"], index
        assert row["detail"] == single.json()["detail"], index
    # Only the two good ones are stored and queued, each whole.
    assert _stored(redis_client) == 2 and _messages(redis_client) == 2
    for row in body["data"]:
        if row["status"] == 202:
            job = client.get(f"/v1/jobs/{row['id']}").json()
            assert job["status"] == "queued"


def test_idempotency_keys_hold_per_item_within_a_batch_and_across_batches(client, redis_client):
    jobs = [
        {"prompt": "a", "idempotency_key": "k-a"},
        {"prompt": "a", "idempotency_key": "k-a"},  # the same job again, in the same batch
        {"prompt": "b", "idempotency_key": "k-a"},  # another body under that key
        {"prompt": "c", "idempotency_key": "k-c"},
    ]
    first = client.post("/v1/jobs/batch", json={"jobs": jobs}).json()["data"]
    assert [row["status"] for row in first] == [202, 200, 422, 202]
    assert first[0]["id"] == first[1]["id"]
    assert "different request body" in first[2]["error"]["message"]
    again = client.post("/v1/jobs/batch", json={"jobs": jobs[:1] + jobs[3:]}).json()["data"]
    assert [row["status"] for row in again] == [200, 200]
    assert [row["id"] for row in again] == [first[0]["id"], first[3]["id"]]
    # A single request with the header finds the batch's job.
    single = client.post("/v1/jobs", json={"prompt": "c"}, headers={"Idempotency-Key": "k-c"})
    assert single.status_code == 200 and single.json()["id"] == first[3]["id"]
    assert _stored(redis_client) == 2 and _messages(redis_client) == 2


def test_the_queue_depth_cap_refuses_the_items_past_it(client, redis_client):
    response = client.post("/v1/jobs/batch", json={"jobs": [{"prompt": str(i)} for i in range(9)]})
    statuses = [row["status"] for row in response.json()["data"]]
    assert statuses == [202] * 6 + [503] * 3
    assert response.json()["data"][-1]["error"]["code"] == "queue_full"
    assert _stored(redis_client) == 6 and _messages(redis_client) == 6


def test_a_batch_is_bounded(client, redis_client):
    assert client.post("/v1/jobs/batch", json={"jobs": []}).status_code == 422
    many = [{"prompt": "x"}] * 1001
    assert client.post("/v1/jobs/batch", json={"jobs": many}).status_code in (413, 422)
    assert _stored(redis_client) == 0


def test_wait_answers_when_any_finishes_with_the_rest_pending(client, redis_client):
    ids = [
        r["id"]
        for r in client.post(
            "/v1/jobs/batch", json={"jobs": [{"prompt": "x"}, {"prompt": "y"}]}
        ).json()["data"]
    ]
    store = JobStore(redis_client, ttl_s=100)

    def finish_later() -> float:
        time.sleep(0.5)
        claim = lifecycle.claim(store.get(ids[0]), "w", tag=ids[0])
        assert store.apply(claim)
        assert store.apply(lifecycle.finish(claim.job, claim.new_run, status=JobStatus.FAILED))
        return time.monotonic()

    with ThreadPoolExecutor(1) as pool:
        finished = pool.submit(finish_later)
        started = time.monotonic()
        response = client.post(
            "/v1/jobs/wait", json={"ids": [*ids, "nope"], "timeout_s": 20, "linger_ms": 0}
        )
        answered = time.monotonic()
    body = response.json()
    assert [job["id"] for job in body["data"]] == [ids[0]]
    assert body["data"][0]["status"] == "failed"
    assert body["pending"] == [ids[1]] and body["unknown"] == ["nope"]
    assert answered - finished.result() < 0.2 and answered - started < 5
    # Nothing left to wait for: answered at once.
    started = time.monotonic()
    quick = client.post("/v1/jobs/wait", json={"ids": ["nope"], "timeout_s": 20}).json()
    assert quick == {"data": [], "pending": [], "unknown": ["nope"]}
    assert time.monotonic() - started < 1
    assert redis_client.hget(job_key(ids[1]), "status") == b"queued"
