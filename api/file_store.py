"""Where file content lives (``/v1/files``: batch inputs, outputs and errors), behind one small
interface: written as a stream of chunks, read back as one, deleted whole.

``RedisFileStore`` is the default: a file is a Redis list of chunks of up to ``CHUNK_BYTES``
with the file's retention as TTL, so nothing more needs to run. Neither side ever holds a whole
file: a writer keeps at most one chunk, a reader yields one chunk at a time.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol, cast

import redis.asyncio as aioredis

from shared.keys import FILE_DATA_PREFIX

__all__ = ["CHUNK_BYTES", "FileStore", "FileWriter", "RedisFileStore"]

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
