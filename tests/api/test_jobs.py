"""The gateway against a real Redis (no worker): submitting, reading, listing and refusing jobs."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator

import pytest
import redis
from fastapi.testclient import TestClient

from api.main import create_app
from api.settings import ApiSettings
from scripts.seed_jobs import ARITHMETIC_GRAMMAR, CHARACTER_SCHEMA
from shared.jobs import DEFAULT_PRIORITY
from shared.keys import JOB_PREFIX, TASK_NAME, queue_list, queue_lists
from shared.settings import DEFAULT_MODEL

# Where a job of the default priority goes.
QUEUE = queue_list(DEFAULT_MODEL, DEFAULT_PRIORITY)


@pytest.fixture
def client(redis_client: redis.Redis, redis_url: str) -> Iterator[TestClient]:
    settings = ApiSettings(insecure_no_auth=True, redis_url=redis_url, max_tokens_limit=512)
    with TestClient(create_app(settings)) as client:
        yield client


def _nothing_enqueued(redis_client: redis.Redis) -> bool:
    return not any(redis_client.llen(name) for name in queue_lists(DEFAULT_MODEL)) and not list(
        redis_client.scan_iter(f"{JOB_PREFIX}*")
    )


def test_submit_stores_and_enqueues_the_job(client, redis_client):
    body = {
        "prompt": "Create a character.",
        "output_type": {"type": "json_schema", "schema": CHARACTER_SCHEMA},
        "sampling": {"max_tokens": 50, "seed": 3},
        "metadata": {"team": "search"},
    }
    response = client.post("/v1/jobs", json=body)
    assert response.status_code == 202
    job = response.json()
    assert job["status"] == "queued"
    assert job["model"] == DEFAULT_MODEL
    assert job["created_at"] and job["started_at"] is None
    assert job["output_type"] == {"type": "json_schema", "schema": CHARACTER_SCHEMA}
    assert job["metadata"] == {"team": "search"}
    assert response.headers["location"] == f"/v1/jobs/{job['id']}"

    [message] = redis_client.lrange(QUEUE, 0, -1)
    envelope = json.loads(message)
    assert envelope["headers"]["task"] == TASK_NAME
    assert json.loads(base64.b64decode(envelope["body"]))[0] == [job["id"]]

    fetched = client.get(response.headers["location"])
    assert fetched.status_code == 200
    assert fetched.json() == job


def test_unknown_job_is_404(client):
    response = client.get("/v1/jobs/does-not-exist")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "job_not_found"


BAD_BODIES = {
    "malformed JSON": ('{"prompt": "x",', "JSON decode error"),
    "empty prompt": ({"prompt": ""}, "prompt: String should have at least 1 character"),
    "prompt and messages": (
        {"prompt": "x", "messages": [{"role": "user", "content": "x"}]},
        "exactly one of `prompt` and `messages`",
    ),
    "neither prompt nor messages": ({"sampling": {}}, "exactly one of `prompt` and `messages`"),
    "invalid regex": (
        {"prompt": "x", "output_type": {"type": "regex", "pattern": "(ab"}},
        "output_type.regex.pattern: Value error, invalid regular expression",
    ),
    "invalid JSON Schema": (
        {"prompt": "x", "output_type": {"type": "json_schema", "schema": {"type": "foo"}}},
        "output_type.json_schema.schema: Value error, invalid JSON Schema",
    ),
    "unknown output type": (
        {"prompt": "x", "output_type": {"type": "xml"}},
        "output_type: Input tag 'xml' found using 'type' does not match",
    ),
    "empty choice list": (
        {"prompt": "x", "output_type": {"type": "choice", "choices": []}},
        "output_type.choice.choices: List should have at least 1 item",
    ),
    "grammar that does not parse": (
        {
            "prompt": "x",
            "output_type": {"type": "grammar", "grammar": ARITHMETIC_GRAMMAR + "\n?oops: ("},
        },
        "output_type.grammar.grammar: Value error, grammar does not parse",
    ),
    "max_tokens above the limit": (
        {"prompt": "x", "sampling": {"max_tokens": 513}},
        "sampling.max_tokens: max_tokens 513 is above this deployment's limit of 512",
    ),
}


@pytest.mark.parametrize("case", list(BAD_BODIES))
def test_bad_input_is_422_with_a_reason_and_nothing_is_enqueued(client, redis_client, case):
    body, expected = BAD_BODIES[case]
    if isinstance(body, str):
        response = client.post(
            "/v1/jobs", content=body, headers={"content-type": "application/json"}
        )
    else:
        response = client.post("/v1/jobs", json=body)
    assert response.status_code == 422, response.text
    error = response.json()
    assert error["error"]["code"] == "invalid_request"
    assert expected in error["error"]["message"], error["error"]["message"]
    assert error["detail"] and all("loc" in d and "msg" in d for d in error["detail"])
    assert _nothing_enqueued(redis_client)


def test_redis_down_is_503_with_retry_after():
    settings = ApiSettings(insecure_no_auth=True, redis_url="redis://127.0.0.1:1/0")
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        response = client.post("/v1/jobs", json={"prompt": "x"})
        assert response.status_code == 503
        assert response.headers["retry-after"]
        assert response.json()["error"]["code"] == "service_unavailable"
        assert client.get("/readyz").status_code == 503
        assert client.get("/healthz").status_code == 200


def test_a_full_redis_is_503_and_writes_nothing(client, redis_client):
    redis_client.config_set("maxmemory", "1")  # every write is over the limit (noeviction)
    try:
        response = client.post("/v1/jobs", json={"prompt": "x"}, headers={"Idempotency-Key": "k"})
    finally:
        redis_client.config_set("maxmemory", "0")
    assert response.status_code == 503, response.text
    assert response.headers["retry-after"]
    assert _nothing_enqueued(redis_client)
    # No idempotency key, no index entry either (the janitor's round lock may be there).
    assert [key for key in redis_client.scan_iter() if key != b"structq:janitor"] == []


def test_idempotency_key_same_body_same_job_other_body_422(client, redis_client):
    body = {"prompt": "x", "sampling": {"max_tokens": 3}}
    first = client.post("/v1/jobs", json=body, headers={"Idempotency-Key": "k1"})
    again = client.post("/v1/jobs", json=body, headers={"Idempotency-Key": "k1"})
    assert (first.status_code, again.status_code) == (202, 200)
    assert again.json() == first.json()
    other = client.post("/v1/jobs", json={**body, "prompt": "y"}, headers={"Idempotency-Key": "k1"})
    assert other.status_code == 422
    assert sum(redis_client.llen(name) for name in queue_lists(DEFAULT_MODEL)) == 1


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({"deadline": "2020-01-01T00:00:00Z"}, "has already passed"),
        ({"deadline": "2999-01-01T00:00:00"}, "timezone"),
        ({"deadline": "2999-01-01T00:00:00Z", "timeout_s": 5}, "at most one of"),
        ({"timeout_s": 0}, "greater than 0"),
        ({"priority": 4}, "less than or equal to 3"),
    ],
)
def test_bad_deadline_or_priority_is_422(client, redis_client, extra, expected):
    response = client.post("/v1/jobs", json={"prompt": "x", **extra})
    assert response.status_code == 422
    assert expected in response.json()["error"]["message"], response.json()
    assert _nothing_enqueued(redis_client)


def test_a_burst_larger_than_the_redis_pool_waits_instead_of_failing(redis_client, redis_url):
    from concurrent.futures import ThreadPoolExecutor

    settings = ApiSettings(insecure_no_auth=True, redis_url=redis_url, redis_max_connections=3)
    with TestClient(create_app(settings)) as client, ThreadPoolExecutor(24) as pool:
        codes = list(
            pool.map(
                lambda _: client.post("/v1/jobs", json={"prompt": "x"}).status_code, range(120)
            )
        )
    assert codes == [202] * 120
    assert redis_client.llen(QUEUE) == 120


def test_listing_pages_newest_first_with_a_cursor(client):
    ids = [client.post("/v1/jobs", json={"prompt": f"{i}"}).json()["id"] for i in range(5)]
    seen, cursor = [], None
    while True:
        params = {"limit": 2} if cursor is None else {"limit": 2, "cursor": cursor}
        page = client.get("/v1/jobs", params=params).json()
        seen += [job["id"] for job in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids[::-1]
    queued = client.get("/v1/jobs", params={"status": "queued", "limit": 200}).json()
    assert [job["id"] for job in queued["data"]] == ids[::-1]
    assert queued["next_cursor"] is None


def test_a_cursor_this_api_never_made_is_422(client):
    response = client.get("/v1/jobs", params={"cursor": "not-a-cursor!"})
    assert response.status_code == 422
    assert "cursor" in response.json()["error"]["message"]
