"""Where file content lives (``/v1/files``: batch inputs, outputs and errors), behind one small
interface: written as a stream of chunks, read back as one, deleted whole.

``RedisFileStore`` is the default: a file is a Redis list of chunks of up to ``CHUNK_BYTES``
with the file's retention as TTL, so nothing more needs to run. Neither side ever holds a whole
file: a writer keeps at most one chunk, a reader yields one chunk at a time.

``S3FileStore`` (``STRUCTQ_FILE_STORE=s3``) keeps each file as one object in an S3-compatible
bucket, written as a multipart upload of ``PART_BYTES`` parts (a writer keeps at most one part)
and read back ``CHUNK_BYTES`` at a time. S3 has no per-object TTL: the bucket's lifecycle rule
expires files (docs/batches.md); a file deleted through the API is deleted at once.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import AsyncIterator
from typing import Any, Protocol, cast

import redis.asyncio as aioredis

from shared.keys import FILE_DATA_PREFIX

__all__ = ["CHUNK_BYTES", "PART_BYTES", "FileStore", "FileWriter", "RedisFileStore", "S3FileStore"]

log = logging.getLogger(__name__)

# One Redis list element: big enough that a 200 MB file is 200 round trips, small enough that
# neither Redis nor the gateway holds much at once.
CHUNK_BYTES = 1 << 20


class FileWriter(Protocol):
    async def write(self, data: bytes) -> None: ...

    async def close(self) -> None:
        """Everything written is stored (call once, after the last write)."""


class FileStore(Protocol):
    def writer(self, file_id: str, ttl_s: int) -> FileWriter: ...

    def read(self, file_id: str) -> AsyncIterator[bytes]: ...

    async def delete(self, file_id: str) -> None: ...


class _RedisWriter:
    def __init__(self, client: aioredis.Redis, key: str, ttl_s: int) -> None:
        self._redis, self._key, self._ttl_s = client, key, ttl_s
        self._buffer = bytearray()
        self._started = False

    async def write(self, data: bytes) -> None:
        self._buffer += data
        while len(self._buffer) >= CHUNK_BYTES:
            await self._push(bytes(self._buffer[:CHUNK_BYTES]))
            del self._buffer[:CHUNK_BYTES]

    async def close(self) -> None:
        if self._buffer or not self._started:
            await self._push(bytes(self._buffer))
            self._buffer.clear()

    async def _push(self, chunk: bytes) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.rpush(self._key, chunk)
            pipe.expire(self._key, self._ttl_s)
            await pipe.execute()
        self._started = True


class RedisFileStore:
    """File content as Redis lists of chunks (``shared.keys.FILE_DATA_PREFIX``)."""

    def __init__(self, client: aioredis.Redis) -> None:
        self._redis = client

    def writer(self, file_id: str, ttl_s: int) -> FileWriter:
        return _RedisWriter(self._redis, FILE_DATA_PREFIX + file_id, ttl_s)

    async def read(self, file_id: str) -> AsyncIterator[bytes]:
        key = FILE_DATA_PREFIX + file_id
        index = 0
        while True:
            chunk = cast(bytes | None, await self._redis.lindex(key, index))
            if chunk is None:
                return
            if chunk:
                yield chunk
            index += 1

    async def delete(self, file_id: str) -> None:
        await self._redis.delete(FILE_DATA_PREFIX + file_id)


# One part of an S3 multipart upload. S3 wants at least 5 MiB (but for the last part) and at
# most 10,000 parts; 8 MiB, boto3's own part size, makes a 200 MB file 25 parts.
PART_BYTES = 8 << 20

# boto3 calls run in asyncio's default thread pool (at most 32 threads): as many pooled
# connections, so no call waits for one.
_S3_MAX_CONNECTIONS = 32


class _S3Writer:
    """Buffers up to one part. The first full part starts a multipart upload; a file that never
    fills one is stored by a single ``put_object`` on close."""

    def __init__(self, store: S3FileStore, key: str) -> None:
        self._store, self._key = store, key
        self._buffer = bytearray()
        self._upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []

    async def write(self, data: bytes) -> None:
        self._buffer += data
        while len(self._buffer) >= PART_BYTES:
            part = bytes(self._buffer[:PART_BYTES])
            del self._buffer[:PART_BYTES]
            await self._upload_part(part)

    async def close(self) -> None:
        s3, bucket = self._store.client, self._store.bucket
        try:
            if self._upload_id is None:
                body = bytes(self._buffer)
                await asyncio.to_thread(s3.put_object, Bucket=bucket, Key=self._key, Body=body)
            else:
                if self._buffer:
                    await self._upload_part(bytes(self._buffer))
                await asyncio.to_thread(
                    s3.complete_multipart_upload,
                    Bucket=bucket,
                    Key=self._key,
                    UploadId=self._upload_id,
                    MultipartUpload={"Parts": self._parts},
                )
                self._upload_id = None
        except BaseException:
            await self.abort()
            raise
        finally:
            self._buffer.clear()

    async def abort(self) -> None:
        """Drop an unfinished multipart upload and its parts (a failure is only logged: the
        bucket's lifecycle rule removes what is left)."""
        self._buffer.clear()
        upload_id, self._upload_id = self._upload_id, None
        if upload_id is None:
            return
        try:
            await asyncio.to_thread(
                self._store.client.abort_multipart_upload,
                Bucket=self._store.bucket,
                Key=self._key,
                UploadId=upload_id,
            )
        except Exception:
            log.warning("could not abort the upload of %s", self._key, exc_info=True)

    async def _upload_part(self, part: bytes) -> None:
        s3, bucket = self._store.client, self._store.bucket
        try:
            if self._upload_id is None:
                created = await asyncio.to_thread(
                    s3.create_multipart_upload, Bucket=bucket, Key=self._key
                )
                self._upload_id = cast(str, created["UploadId"])
            number = len(self._parts) + 1
            uploaded = await asyncio.to_thread(
                s3.upload_part,
                Bucket=bucket,
                Key=self._key,
                UploadId=self._upload_id,
                PartNumber=number,
                Body=part,
            )
        except BaseException:
            await self.abort()
            raise
        self._parts.append({"PartNumber": number, "ETag": uploaded["ETag"]})


class S3FileStore:
    """File content as objects ``<prefix><file id>`` in an S3-compatible bucket, through a
    boto3 client (its calls run in threads)."""

    def __init__(self, client: Any, bucket: str, prefix: str) -> None:
        self.client, self.bucket, self._prefix = client, bucket, prefix
        # Writers not yet closed, so that deleting their file also drops their upload.
        self._open: weakref.WeakValueDictionary[str, _S3Writer] = weakref.WeakValueDictionary()

    @classmethod
    def connect(
        cls, bucket: str, prefix: str, endpoint_url: str | None, region: str | None
    ) -> S3FileStore:
        """A store with its own boto3 client; credentials from boto3's usual chain
        (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, a profile, an IAM role...)."""
        try:
            import boto3
            from botocore.config import Config
        except ImportError as exc:
            raise RuntimeError("STRUCTQ_FILE_STORE=s3 needs boto3: install structq[s3]") from exc
        config = Config(
            max_pool_connections=_S3_MAX_CONNECTIONS,
            retries={"mode": "standard"},
            # MinIO and most other S3-compatible stores want <endpoint>/<bucket>/<key>.
            s3={"addressing_style": "path"} if endpoint_url else None,
        )
        client = boto3.session.Session().client(
            "s3", endpoint_url=endpoint_url, region_name=region, config=config
        )
        return cls(client, bucket, prefix)

    def key(self, file_id: str) -> str:
        return self._prefix + file_id

    def writer(self, file_id: str, ttl_s: int) -> FileWriter:
        # ttl_s is not used: the bucket's lifecycle rule expires objects.
        writer = _S3Writer(self, self.key(file_id))
        self._open[file_id] = writer
        return writer

    async def read(self, file_id: str) -> AsyncIterator[bytes]:
        """The object's bytes, ``CHUNK_BYTES`` at a time; nothing for a missing object (as
        ``RedisFileStore`` reads a missing key)."""
        try:
            response = await asyncio.to_thread(
                self.client.get_object, Bucket=self.bucket, Key=self.key(file_id)
            )
        except self.client.exceptions.NoSuchKey:
            return
        body = response["Body"]
        try:
            while chunk := await asyncio.to_thread(body.read, CHUNK_BYTES):
                yield chunk
        finally:
            body.close()

    async def delete(self, file_id: str) -> None:
        writer = self._open.pop(file_id, None)
        if writer is not None:
            await writer.abort()
        await asyncio.to_thread(
            self.client.delete_object, Bucket=self.bucket, Key=self.key(file_id)
        )
