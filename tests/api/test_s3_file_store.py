"""The S3 file store against moto's S3 server (a thread in this process, on a free local port):
streamed multipart writes, chunked reads, deletes; the setting that picks it; and the Files API
on top of it, with a real Redis for the metadata."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import redis
from fastapi.testclient import TestClient
from moto.server import ThreadedMotoServer
from pydantic import ValidationError

from api.file_store import CHUNK_BYTES, PART_BYTES, S3FileStore
from api.main import create_app
from api.settings import ApiSettings
from shared.keys import FILE_DATA_PREFIX

REGION = "us-east-1"
PREFIX = "structq/files/"


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Dummy credentials through boto3's usual chain, and no local AWS config read."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))


@pytest.fixture
def bucket(endpoint: str, request: pytest.FixtureRequest) -> str:
    name = "structq-" + request.node.name.replace("_", "-")[:40].strip("-").lower()
    _s3(endpoint).create_bucket(Bucket=name)
    return name


@pytest.fixture
def store(endpoint: str, bucket: str) -> S3FileStore:
    return S3FileStore.connect(bucket, PREFIX, endpoint, REGION)


def _s3(endpoint: str) -> Any:
    return boto3.client("s3", endpoint_url=endpoint, region_name=REGION)


def _lines(total: int) -> bytes:
    line = json.dumps({"custom_id": "x", "body": {"prompt": "y" * 300}}).encode() + b"\n"
    return line * (total // len(line) + 1)


async def _write(store: S3FileStore, file_id: str, data: bytes, piece: int = 64 << 10) -> None:
    writer = store.writer(file_id, 60)
    for start in range(0, len(data), piece):
        await writer.write(data[start : start + piece])
        assert len(writer._buffer) < PART_BYTES  # type: ignore[attr-defined]
    await writer.close()


async def _read(store: S3FileStore, file_id: str) -> list[bytes]:
    return [chunk async for chunk in store.read(file_id)]


def test_a_small_file_is_one_put(store, endpoint, bucket):
    data = b'{"custom_id": "a"}\n{"custom_id": "b"}\n'
    asyncio.run(_write(store, "file-small", data))
    head = _s3(endpoint).head_object(Bucket=bucket, Key=PREFIX + "file-small")
    assert head["ContentLength"] == len(data) and "-" not in head["ETag"]  # not multipart
    assert b"".join(asyncio.run(_read(store, "file-small"))) == data


def test_an_empty_file_reads_as_nothing(store):
    asyncio.run(_write(store, "file-empty", b""))
    assert asyncio.run(_read(store, "file-empty")) == []


def test_a_large_file_is_uploaded_in_parts_and_read_back_in_bounded_chunks(store, endpoint, bucket):
    data = _lines(12 << 20)
    asyncio.run(_write(store, "file-large", data))
    head = _s3(endpoint).head_object(Bucket=bucket, Key=PREFIX + "file-large")
    assert head["ContentLength"] == len(data)
    assert head["ETag"].strip('"').endswith("-2")  # two parts: 8 MiB and the rest
    chunks = asyncio.run(_read(store, "file-large"))
    assert len(chunks) > 1 and all(0 < len(chunk) <= CHUNK_BYTES for chunk in chunks)
    assert b"".join(chunks) == data


def test_a_deleted_or_missing_file_reads_as_nothing(store, endpoint, bucket):
    asyncio.run(_write(store, "file-gone", b"{}\n"))
    asyncio.run(store.delete("file-gone"))
    assert "Contents" not in _s3(endpoint).list_objects_v2(Bucket=bucket)
    assert asyncio.run(_read(store, "file-gone")) == []
    assert asyncio.run(_read(store, "file-never")) == []
    asyncio.run(store.delete("file-never"))  # deleting a missing file is no error


def test_deleting_a_file_being_written_drops_its_upload(store, endpoint, bucket):
    async def go() -> None:
        writer = store.writer("file-partial", 60)
        await writer.write(b"x" * (PART_BYTES + 10))  # one part uploaded, 10 bytes buffered
        uploads = _s3(endpoint).list_multipart_uploads(Bucket=bucket).get("Uploads", [])
        assert [u["Key"] for u in uploads] == [PREFIX + "file-partial"]
        await store.delete("file-partial")

    asyncio.run(go())
    assert not _s3(endpoint).list_multipart_uploads(Bucket=bucket).get("Uploads")
    assert "Contents" not in _s3(endpoint).list_objects_v2(Bucket=bucket)


def test_s3_without_a_bucket_is_a_settings_error():
    with pytest.raises(ValidationError, match="STRUCTQ_S3_BUCKET"):
        ApiSettings(insecure_no_auth=True, file_store="s3")
    assert ApiSettings(insecure_no_auth=True).file_store == "redis"


@pytest.fixture
def s3_settings(redis_url: str, endpoint: str, bucket: str) -> ApiSettings:
    return ApiSettings(
        redis_url=redis_url,
        insecure_no_auth=True,
        compile_check=False,
        file_store="s3",
        s3_bucket=bucket,
        s3_endpoint_url=endpoint,
        s3_region=REGION,
    )


def test_the_files_api_on_s3(redis_client: redis.Redis, s3_settings, endpoint, bucket):
    data = _lines(12 << 20)
    with TestClient(create_app(s3_settings)) as client:
        assert isinstance(client.app.state.files.store, S3FileStore)  # type: ignore[attr-defined]
        response = client.post(
            "/v1/files",
            files={"file": ("in.jsonl", data, "application/jsonl")},
            data={"purpose": "batch"},
        )
        assert response.status_code == 200, response.text
        meta = response.json()
        assert meta["bytes"] == len(data) and meta["lines"] == data.count(b"\n")
        keys = [o["Key"] for o in _s3(endpoint).list_objects_v2(Bucket=bucket)["Contents"]]
        assert keys == [PREFIX + meta["id"]]
        assert not list(redis_client.scan_iter(f"{FILE_DATA_PREFIX}*"))
        content = client.get(f"/v1/files/{meta['id']}/content")
        assert content.status_code == 200 and content.content == data
        assert client.delete(f"/v1/files/{meta['id']}").json()["deleted"] is True
        assert "Contents" not in _s3(endpoint).list_objects_v2(Bucket=bucket)


def test_an_upload_over_the_limit_leaves_nothing_in_the_bucket(
    redis_client: redis.Redis, s3_settings, endpoint, bucket
):
    small = s3_settings.model_copy(update={"file_max_bytes": PART_BYTES + 1024})
    with TestClient(create_app(small)) as client:
        response = client.post(
            "/v1/files",
            files={"file": ("in.jsonl", _lines(PART_BYTES + 4096), "application/jsonl")},
            data={"purpose": "batch"},
        )
        assert response.status_code == 413, response.text
    s3 = _s3(endpoint)
    assert not s3.list_multipart_uploads(Bucket=bucket).get("Uploads")
    assert "Contents" not in s3.list_objects_v2(Bucket=bucket)
