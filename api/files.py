"""Files (``/v1/files``): uploads of batch inputs, and the output and error files batches
produce. A file's metadata is a ``FileObject`` in Redis; its content is in a ``FileStore``.

An upload is parsed as it arrives (multipart, streamed): each piece of the file goes to the
store as soon as it is read, so the gateway never holds a whole file, and its size and line
limits are enforced on the way (413, 422), the partial file then deleted.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any, cast

import redis.asyncio as aioredis
from python_multipart.multipart import MultipartParser, parse_options_header

from api.errors import invalid_field
from api.file_store import FileStore
from api.settings import ApiSettings
from shared.batches import FileObject
from shared.errors import FileNotFound, PayloadTooLarge
from shared.keys import FILE_PREFIX, FILES_INDEX_PREFIX

__all__ = ["Files", "Produced", "new_file_id"]

_PURPOSES = ("batch",)


def new_file_id() -> str:
    return f"file-{uuid.uuid4().hex}"


class _Upload:
    """The multipart body's parts as python-multipart reports them: the ``purpose`` field, and
    the ``file`` part's name and bytes (handed on as they come, never kept)."""

    def __init__(self, on_file_data: Callable[[bytes], None]) -> None:
        self.fields: dict[str, str] = {}
        self.filename: str | None = None
        self._on_file_data = on_file_data
        self._header_field = b""
        self._headers: dict[bytes, bytes] = {}
        self._name: str | None = None
        self._current_value = b""
        self._value = bytearray()
        self._is_file = False

    def callbacks(self) -> dict[str, Callable[..., None]]:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": self._header_field_data,
            "on_header_value": self._header_value_data,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
        }

    def _part_begin(self) -> None:
        self._headers, self._header_field, self._value = {}, b"", bytearray()
        self._current_value = b""

    def _header_field_data(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]

    def _header_value_data(self, data: bytes, start: int, end: int) -> None:
        self._current_value += data[start:end]

    def _header_end(self) -> None:
        self._headers[self._header_field.lower()] = self._current_value
        self._header_field, self._current_value = b"", b""

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        self._name = options.get(b"name", b"").decode("utf-8", "replace")
        self._is_file = self._name == "file"
        if self._is_file:
            self.filename = options.get(b"filename", b"upload.jsonl").decode("utf-8", "replace")

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._is_file:
            self._on_file_data(data[start:end])
        elif len(self._value) < 4096:
            self._value += data[start:end]

    def _part_end(self) -> None:
        if not self._is_file and self._name:
            self.fields[self._name] = self._value.decode("utf-8", "replace")


class Produced:
    """A file being written by the service: registered by ``finish`` if anything was written
    (None, and nothing left behind, otherwise)."""

    def __init__(self, files: Files, filename: str, purpose: str, owner: str | None) -> None:
        self._files, self._filename, self._purpose, self._owner = files, filename, purpose, owner
        self.id = new_file_id()
        self._writer = files.store.writer(self.id, files.retention_s)
        self._size = self._lines = 0

    async def write(self, data: bytes) -> None:
        self._size += len(data)
        self._lines += data.count(b"\n")
        await self._writer.write(data)

    async def finish(self) -> FileObject | None:
        if not self._size:
            return None
        await self._writer.close()
        return await self._files.register(
            self.id, self._filename, self._purpose, self._size, self._lines, self._owner
        )


class Files:
    """File metadata in Redis and content in ``store``; ``scope``: whose files a caller may
    see (None: every one, an admin)."""

    def __init__(self, client: aioredis.Redis, store: FileStore, settings: ApiSettings) -> None:
        self._redis = client
        self.store = store
        self._settings = settings

    async def upload(
        self, content_type: str, body: AsyncIterator[bytes], owner: str | None
    ) -> FileObject:
        """A multipart upload (``file`` and ``purpose``), stored as it streams in."""
        kind, options = parse_options_header(content_type)
        if kind != b"multipart/form-data" or b"boundary" not in options:
            raise invalid_field(("body",), "upload a file as multipart/form-data")
        file_id = new_file_id()
        limit = self._settings.file_max_bytes
        pending: list[bytes] = []
        upload = _Upload(pending.append)
        callbacks: Any = upload.callbacks()  # python-multipart's stub wants its own TypedDict
        parser = MultipartParser(options[b"boundary"], callbacks)
        writer = self.store.writer(file_id, self._settings.file_retention_s)
        size, lines, last = 0, 0, b"\n"
        try:
            async for chunk in body:
                parser.write(chunk)
                for data in pending:
                    size += len(data)
                    if size > limit:
                        raise PayloadTooLarge(
                            f"the file is larger than {limit} bytes (STRUCTQ_FILE_MAX_BYTES)"
                        )
                    lines += data.count(b"\n")
                    if data:
                        last = data[-1:]
                    await writer.write(data)
                pending.clear()
                if lines > self._settings.file_max_lines:
                    raise invalid_field(
                        ("body", "file"),
                        f"the file has more than {self._settings.file_max_lines} lines "
                        "(STRUCTQ_FILE_MAX_LINES)",
                    )
            parser.finalize()
            if upload.filename is None:
                raise invalid_field(("body", "file"), "a `file` part is required")
            purpose = upload.fields.get("purpose", "")
            if purpose not in _PURPOSES:
                raise invalid_field(("body", "purpose"), f"purpose must be one of {_PURPOSES}")
            if last != b"\n" and size:
                lines += 1  # a last line without its newline
            if lines > self._settings.file_max_lines:
                raise invalid_field(
                    ("body", "file"),
                    f"the file has more than {self._settings.file_max_lines} lines "
                    "(STRUCTQ_FILE_MAX_LINES)",
                )
            await writer.close()
        except BaseException:
            await self.store.delete(file_id)
            raise
        return await self.register(file_id, upload.filename, purpose, size, lines, owner)

    def produce(self, filename: str, purpose: str, owner: str | None) -> Produced:
        """A file the service writes (a batch's output or errors), piece by piece."""
        return Produced(self, filename, purpose, owner)

    @property
    def retention_s(self) -> int:
        return self._settings.file_retention_s

    async def register(
        self, file_id: str, filename: str, purpose: str, size: int, lines: int, owner: str | None
    ) -> FileObject:
        now = int(time.time())
        ttl = self._settings.file_retention_s
        meta = FileObject(
            id=file_id,
            bytes=size,
            created_at=now,
            expires_at=now + ttl,
            filename=filename,
            purpose=purpose,
            lines=lines,
            owner=owner,
        )
        record = meta.model_dump_json()
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(FILE_PREFIX + file_id, mapping={"meta": record, "owner": owner or ""})
            pipe.expire(FILE_PREFIX + file_id, ttl)
            index = FILES_INDEX_PREFIX + (owner or "")
            pipe.zadd(index, {file_id: now})
            pipe.expire(index, ttl)
            await pipe.execute()
        return meta

    async def get(self, file_id: str, scope: str | None) -> FileObject:
        """The file, or 404 (unknown, expired, or another key's)."""
        raw, owner = cast(
            list[bytes | None], await self._redis.hmget(FILE_PREFIX + file_id, ["meta", "owner"])
        )
        if raw is None or (scope is not None and (owner or b"").decode() != scope):
            raise FileNotFound(f"no file {file_id!r}")
        meta = FileObject.model_validate_json(raw)
        return meta.model_copy(update={"owner": (owner or b"").decode() or None})

    async def list(self, owner: str | None, limit: int, after: str | None) -> list[FileObject]:
        """An owner's files, newest first, after the file id ``after``."""
        index = FILES_INDEX_PREFIX + (owner or "")
        ids = [i.decode() for i in cast(list[bytes], await self._redis.zrevrange(index, 0, -1))]
        if after is not None and after in ids:
            ids = ids[ids.index(after) + 1 :]
        out: list[FileObject] = []
        for file_id in ids:
            try:
                out.append(await self.get(file_id, None))
            except FileNotFound:
                await self._redis.zrem(index, file_id)  # expired
                continue
            if len(out) == limit:
                break
        return out

    async def delete(self, file_id: str, scope: str | None) -> FileObject:
        meta = await self.get(file_id, scope)
        await self.store.delete(file_id)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(FILE_PREFIX + file_id)
            pipe.zrem(FILES_INDEX_PREFIX + (meta.owner or ""), file_id)
            await pipe.execute()
        return meta

    async def lines(self, file_id: str) -> AsyncIterator[bytes]:
        """The file's lines, without their newlines (a last line without one included)."""
        rest = b""
        async for chunk in self.store.read(file_id):
            parts = (rest + chunk).split(b"\n")
            rest = parts.pop()
            for line in parts:
                yield line
        if rest:
            yield rest
