"""The Files API against a real Redis (no worker): streamed uploads and downloads, limits,
ownership; and the batch line format (parsing, answers) on its own."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import redis
from fastapi.testclient import TestClient

from api import batch_lines
from api.auth import hash_key
from api.file_store import CHUNK_BYTES
from api.main import create_app
from api.settings import ApiKey, ApiSettings
from shared.errors import ErrorCode
from shared.keys import FILE_DATA_PREFIX

ALICE, BOB = "sq_files-alice", "sq_files-bob"


@pytest.fixture
def settings(redis_url: str) -> ApiSettings:
    return ApiSettings(
        redis_url=redis_url,
        api_keys=[
            ApiKey(name="alice", sha256=hash_key(ALICE)),
            ApiKey(name="bob", sha256=hash_key(BOB)),
        ],
        file_max_bytes=3 * CHUNK_BYTES,
        file_max_lines=100_000,
        compile_check=False,
    )


@pytest.fixture
def client(redis_client: redis.Redis, settings: ApiSettings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as client:
        yield client


def _as(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _upload(client: TestClient, data: bytes, key: str = ALICE, purpose: str = "batch"):
    return client.post(
        "/v1/files",
        files={"file": ("in.jsonl", data, "application/jsonl")},
        data={"purpose": purpose},
        headers=_as(key),
    )


def test_a_file_larger_than_a_chunk_round_trips_in_chunks(client, redis_client):
    line = json.dumps({"custom_id": "x", "body": {"prompt": "y" * 200}}).encode() + b"\n"
    data = line * (CHUNK_BYTES * 2 // len(line) + 10)
    response = _upload(client, data)
    assert response.status_code == 200, response.text
    meta = response.json()
    assert meta["bytes"] == len(data) and meta["purpose"] == "batch"
    assert meta["lines"] == data.count(b"\n") and meta["id"].startswith("file-")
    # Stored as chunks of at most CHUNK_BYTES, never as one value.
    assert redis_client.llen(FILE_DATA_PREFIX + meta["id"]) == 3
    content = client.get(f"/v1/files/{meta['id']}/content", headers=_as(ALICE))
    assert content.status_code == 200 and content.content == data
    assert client.get(f"/v1/files/{meta['id']}", headers=_as(ALICE)).json() == meta


def test_limits_refuse_and_store_nothing(client, redis_client, settings):
    too_big = _upload(client, b"x" * (settings.file_max_bytes + 1))
    assert too_big.status_code == 413, too_big.text
    assert "STRUCTQ_FILE_MAX_BYTES" in too_big.json()["error"]["message"]
    assert _upload(client, b"{}\n", purpose="assistants").status_code == 422
    assert not list(redis_client.scan_iter(f"{FILE_DATA_PREFIX}*"))
    listed = client.get("/v1/files", headers=_as(ALICE)).json()
    assert listed["data"] == [] and listed["object"] == "list"


def test_too_many_lines_is_422(redis_client, settings):
    few = settings.model_copy(update={"file_max_lines": 3})
    with TestClient(create_app(few)) as client:
        response = _upload(client, b"{}\n" * 4)
        assert response.status_code == 422
        assert "more than 3 lines" in response.json()["error"]["message"]
        assert _upload(client, b"{}\n{}\n{}").status_code == 200  # no final newline: 3 lines


def test_files_are_their_owners(client):
    file_id = _upload(client, b"{}\n").json()["id"]
    for path in (f"/v1/files/{file_id}", f"/v1/files/{file_id}/content"):
        assert client.get(path, headers=_as(BOB)).status_code == 404
    assert client.delete(f"/v1/files/{file_id}", headers=_as(BOB)).status_code == 404
    assert client.get("/v1/files", headers=_as(BOB)).json()["data"] == []
    assert client.post("/v1/files", files={"file": ("a", b"{}")}).status_code == 401
    deleted = client.delete(f"/v1/files/{file_id}", headers=_as(ALICE)).json()
    assert deleted == {"id": file_id, "object": "file", "deleted": True}
    assert client.get(f"/v1/files/{file_id}", headers=_as(ALICE)).status_code == 404


def test_a_batch_over_another_keys_file_is_404(client):
    file_id = _upload(client, b'{"custom_id": "a", "body": {"prompt": "x"}}\n').json()["id"]
    body = {"input_file_id": file_id, "endpoint": "/v1/jobs", "completion_window": "24h"}
    assert client.post("/v1/batches", json=body, headers=_as(BOB)).status_code == 404
    created = client.post("/v1/batches", json=body, headers=_as(ALICE))
    assert created.status_code == 200, created.text
    batch = created.json()
    assert batch["status"] == "validating" and batch["object"] == "batch"
    assert client.get(f"/v1/batches/{batch['id']}", headers=_as(BOB)).status_code == 404
    bad = {**body, "endpoint": "/v1/embeddings"}
    assert client.post("/v1/batches", json=bad, headers=_as(ALICE)).status_code == 422
    too_long = {**body, "completion_window": "72h"}  # past STRUCTQ_JOB_TTL_S (1 day)
    response = client.post("/v1/batches", json=too_long, headers=_as(ALICE))
    assert response.status_code == 422 and "STRUCTQ_JOB_TTL_S" in response.text


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"{oops", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"method": "POST", "url": "/v1/jobs", "body": {}}', "custom_id"),
        (b'{"custom_id": "a", "method": "GET", "url": "/v1/jobs", "body": {}}', "POST"),
        (b'{"custom_id": "a", "url": "/v1/completions", "body": {"prompt": "x"}}', "endpoint"),
        (b'{"custom_id": "a", "url": "/v1/jobs", "body": {"prompt": "x", "bogus": 1}}', "bogus"),
    ],
)
def test_a_bad_line_is_refused_with_a_reason(settings, raw, message):
    with pytest.raises(batch_lines.LineRefused, match=message) as refused:
        batch_lines.parse(raw, 0, "/v1/jobs", settings, 60)
    assert refused.value.code == ErrorCode.INVALID_REQUEST


def test_lines_of_each_endpoint_become_jobs(settings):
    bare = batch_lines.parse(b'{"custom_id": "c1", "prompt": "x"}', 4, "/v1/jobs", settings, 60)
    assert bare.custom_id == "c1" and bare.bodies[0].prompt == "x"
    chat = json.dumps(
        {
            "custom_id": "c2",
            "url": "/v1/chat/completions",
            "body": {"messages": [{"role": "user", "content": "hi"}], "n": 2},
        }
    ).encode()
    line = batch_lines.parse(chat, 0, "/v1/chat/completions", settings, 60)
    assert line.n == 2 and len(line.bodies) == 2 and line.fit_max_tokens
    assert all(body.model == settings.model and not body.stream for body in line.bodies)
