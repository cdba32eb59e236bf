"""The gateway's model routing against a real Redis (no worker): base models from the settings,
LoRA adapters from the workers' announcements, an unknown name refused with 404 before anything
is stored; and ``/v1/models`` built from live announcements."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
import redis
from fastapi.testclient import TestClient

from api.main import create_app
from api.settings import ApiSettings
from shared.jobs import DEFAULT_PRIORITY
from shared.keys import ADAPTERS, JOB_PREFIX, WORKERS_INDEX, queue_list, worker_key
from shared.records import AdapterRecord, WorkerAnnouncement
from shared.settings import DEFAULT_MODEL

OTHER = "other-model"


@pytest.fixture
def client(redis_client: redis.Redis, redis_url: str) -> Iterator[TestClient]:
    settings = ApiSettings(
        insecure_no_auth=True,
        redis_url=redis_url,
        extra_models=[OTHER],
        adapter_ttl_s=3600,
    )
    with TestClient(create_app(settings)) as client:
        yield client


def _adapter(client: redis.Redis, name: str, parent: str, age_s: float = 0.0) -> None:
    record = AdapterRecord(parent=parent, root=f"/adapters/{name}", seen=time.time() - age_s)
    client.hset(ADAPTERS, name, record.model_dump_json())


def _announce(client: redis.Redis, worker_id: str, model: str, adapters: dict[str, str]) -> None:
    announcement = WorkerAnnouncement(
        worker_id=worker_id,
        model=model,
        queue=f"q-{model}",
        max_model_len=2048,
        adapters=adapters,
        pid=1,
        ready_at=datetime.now(UTC),
    )
    client.set(worker_key(worker_id), announcement.model_dump_json(), px=60_000)
    client.zadd(WORKERS_INDEX, {worker_id: int(time.time() * 1000) + 60_000})


def _stored(client: redis.Redis) -> int:
    return sum(1 for _ in client.scan_iter(f"{JOB_PREFIX}*"))


def test_each_model_goes_to_its_own_pool_queue(client, redis_client):
    for model in (DEFAULT_MODEL, OTHER):
        response = client.post("/v1/jobs", json={"prompt": "x", "model": model})
        assert response.status_code == 202, response.text
        assert response.json()["model"] == model
        assert "adapter" not in response.json()  # only a job with one names it
        assert redis_client.llen(queue_list(model, DEFAULT_PRIORITY)) == 1


def test_an_adapter_goes_to_its_base_models_queue_and_is_named_in_the_job(client, redis_client):
    _adapter(redis_client, "sql-lora", OTHER)
    response = client.post("/v1/jobs", json={"prompt": "x", "model": "sql-lora"})
    assert response.status_code == 202, response.text
    job = response.json()
    assert (job["model"], job["adapter"]) == (OTHER, "sql-lora")
    assert redis_client.llen(queue_list(OTHER, DEFAULT_PRIORITY)) == 1
    assert redis_client.llen(queue_list(DEFAULT_MODEL, DEFAULT_PRIORITY)) == 0
    assert client.get(f"/v1/jobs/{job['id']}").json()["adapter"] == "sql-lora"


@pytest.mark.parametrize(
    "case",
    ["never announced", "announced too long ago", "base model not served here"],
)
def test_an_unknown_model_or_adapter_is_404_and_nothing_is_stored(client, redis_client, case):
    if case == "announced too long ago":
        _adapter(redis_client, "ghost", DEFAULT_MODEL, age_s=7200)
    elif case == "base model not served here":
        _adapter(redis_client, "ghost", "a-model-this-gateway-lacks")
    for path, body in [
        ("/v1/jobs", {"prompt": "x", "model": "ghost"}),
        ("/v1/completions", {"prompt": "x", "model": "ghost", "max_tokens": 4}),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": "x"}], "model": "ghost"},
        ),
    ]:
        response = client.post(path, json=body)
        assert response.status_code == 404, (path, response.text)
        error = response.json()["error"]
        assert error["code"] == "model_not_found"
        assert "ghost" in error["message"] and "does not exist" in error["message"]
        assert error["param"] == "model"
    assert _stored(redis_client) == 0
    for model in (DEFAULT_MODEL, OTHER):
        assert redis_client.llen(queue_list(model, DEFAULT_PRIORITY)) == 0


def test_an_adapter_announced_after_the_gateway_started_is_routed_at_once(client, redis_client):
    assert client.post("/v1/jobs", json={"prompt": "x", "model": "late"}).status_code == 404
    _adapter(redis_client, "late", DEFAULT_MODEL)
    time.sleep(0.3)  # the gateway reads the adapters again for an unknown name after 0.25 s
    response = client.post("/v1/jobs", json={"prompt": "x", "model": "late"})
    assert response.status_code == 202, response.text


def test_the_model_list_shows_live_workers_base_models_and_adapters_with_parents(
    client, redis_client
):
    _announce(redis_client, "w1", DEFAULT_MODEL, {"sql-lora": "/a/sql"})
    _announce(redis_client, "w2", DEFAULT_MODEL, {"sql-lora": "/a/sql"})
    _announce(redis_client, "w3", OTHER, {})
    cards = {card["id"]: card for card in client.get("/v1/models").json()["data"]}
    assert set(cards) == {DEFAULT_MODEL, OTHER, "sql-lora"}
    assert (cards[DEFAULT_MODEL]["workers"], cards[DEFAULT_MODEL]["parent"]) == (2, None)
    assert (cards[OTHER]["workers"], cards[OTHER]["parent"]) == (1, None)
    lora = cards["sql-lora"]
    assert (lora["parent"], lora["root"], lora["workers"]) == (DEFAULT_MODEL, "/a/sql", 2)
    assert client.get("/v1/models/sql-lora").json() == lora
    assert client.get("/v1/models/nope").status_code == 404


def test_an_unreadable_adapter_record_is_skipped(client, redis_client):
    redis_client.hset(ADAPTERS, "broken", json.dumps({"parent": 3}))
    _adapter(redis_client, "fine", DEFAULT_MODEL)
    assert client.post("/v1/jobs", json={"prompt": "x", "model": "broken"}).status_code == 404
    assert client.post("/v1/jobs", json={"prompt": "x", "model": "fine"}).status_code == 202
