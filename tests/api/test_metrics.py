"""The gateway's ``/metrics`` against a real Redis (no worker): requests, submissions, refusals
and the queue's figures move by what was done. (Counters are per process and other tests
move them too: each test compares before and after.)"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from api.main import create_app
from api.settings import ApiSettings
from shared.jobs import DEFAULT_PRIORITY
from shared.settings import DEFAULT_MODEL

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture
def client(redis_client: redis.Redis, redis_url: str) -> Iterator[TestClient]:
    settings = ApiSettings(insecure_no_auth=True, redis_url=redis_url, max_body_bytes=10_000)
    with TestClient(create_app(settings)) as client:
        yield client


def _scrape(client: TestClient) -> Samples:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def _value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_submissions_refusals_and_requests_are_counted(client):
    before = _scrape(client)
    body = {"prompt": "x", "output_type": {"type": "choice", "choices": ["a", "b"]}}
    for _ in range(3):
        assert client.post("/v1/jobs", json=body).status_code == 202
    assert (
        client.post("/v1/jobs", json={"prompt": "x", "sampling": {"top_p": 7}}).status_code == 422
    )
    assert client.post("/v1/jobs", content=b"{" + b" " * 20_000 + b"}").status_code == 413
    assert client.get("/v1/jobs/nope").status_code == 404
    after = _scrape(client)

    def moved(name: str, **labels: str) -> float:
        return _value(after, name, **labels) - _value(before, name, **labels)

    submitted = "structq_jobs_submitted_total"
    assert moved(submitted, model=DEFAULT_MODEL, output_type="choice") == 3
    assert moved("structq_refusals_total", status="422", code="invalid_request") == 1
    assert moved("structq_refusals_total", status="413", code="payload_too_large") == 1
    assert moved("structq_refusals_total", status="404", code="job_not_found") == 1
    requests = "structq_http_requests_total"
    assert moved(requests, route="/v1/jobs", method="POST", status="202") == 3
    assert moved(requests, route="/v1/jobs/{job_id}", method="GET", status="404") == 1
    assert moved(requests, route="other", method="POST", status="413") == 1
    count = "structq_http_request_duration_seconds_count"
    assert moved(count, route="/v1/jobs", method="POST") == 4  # 202 x3 and the 422


def test_the_queue_is_read_from_redis_when_scraped(client):
    empty = _scrape(client)
    queued, messages = "structq_queue_jobs", "structq_queue_messages"
    assert _value(empty, queued, model=DEFAULT_MODEL) == 0
    assert _value(empty, "structq_queue_oldest_age_seconds", model=DEFAULT_MODEL) == 0
    for priority in (DEFAULT_PRIORITY, DEFAULT_PRIORITY, 3):
        assert (
            client.post("/v1/jobs", json={"prompt": "x", "priority": priority}).status_code == 202
        )
    samples = _scrape(client)
    assert _value(samples, queued, model=DEFAULT_MODEL) == 3
    assert _value(samples, messages, model=DEFAULT_MODEL, priority=str(DEFAULT_PRIORITY)) == 2
    assert _value(samples, messages, model=DEFAULT_MODEL, priority="3") == 1
    assert _value(samples, messages, model=DEFAULT_MODEL, priority="0") == 0
    assert 0 < _value(samples, "structq_queue_oldest_age_seconds", model=DEFAULT_MODEL) < 60
    assert _value(samples, "structq_workers_live", model=DEFAULT_MODEL) == 0
    assert _value(samples, "structq_jobs_running") == 0
    assert _value(samples, "structq_dead_letters") == 0
