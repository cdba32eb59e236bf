"""Batches (``/v1/batches``): create one over an uploaded file, read, list, cancel. A created
batch is handed to the batch driver (``api.batch_driver``), which some gateway process runs.

A batch's record is its ``Batch`` JSON in a hash (``shared.keys.BATCH_PREFIX``); every change
of its status goes through ``update``, a check-and-set on the stored status, so the driver and
a client cancelling never overwrite each other.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import cast

import redis.asyncio as aioredis

from api.auth import Caller
from api.errors import invalid_field
from api.files import Files
from api.settings import ApiSettings
from shared.batches import Batch, BatchCreate, BatchStatus, RequestCounts, window_seconds
from shared.celery_message import task_message
from shared.errors import BatchNotFound, Conflict, UnsafeUrl
from shared.jobs import BatchWebhookEvent, WebhookAttempt, utcnow
from shared.keys import (
    BATCH_PREFIX,
    BATCHES_ACTIVE,
    BATCHES_INDEX_PREFIX,
    WEBHOOK_QUEUE,
    WEBHOOK_TASK_NAME,
    delivery_key,
    hooks_key,
)
from shared.records import WebhookDelivery
from shared.webhooks import resolve_checked

__all__ = ["Batches"]

# KEYS: 1 the batch hash; with a webhook delivery: 2 its hash, 3 the webhook queue. ARGV: 1
# allowed current statuses (space-separated), 2 new JSON, 3 new status; with a delivery: 4 its
# spec, 5 its task message, 6 its TTL (s). Writes only while the stored status is one of those
# (so a batch's end, and its webhook, happen once); returns 1, or the stored status.
_UPDATE = """#!lua
local current = redis.call('HGET', KEYS[1], 'status')
if not current then return '' end
if not string.find(' ' .. ARGV[1] .. ' ', ' ' .. current .. ' ', 1, true) then return current end
redis.call('HSET', KEYS[1], 'batch', ARGV[2], 'status', ARGV[3])
if #KEYS == 3 then
  redis.call('HSET', KEYS[2], 'spec', ARGV[4], 'attempts', 0, 'state', 'pending')
  redis.call('EXPIRE', KEYS[2], ARGV[6])
  redis.call('LPUSH', KEYS[3], ARGV[5])
end
return 1
"""

_LIVE = (BatchStatus.VALIDATING, BatchStatus.IN_PROGRESS, BatchStatus.FINALIZING)


class Batches:
    def __init__(self, client: aioredis.Redis, files: Files, settings: ApiSettings) -> None:
        self._redis = client
        self.files = files
        self._settings = settings
        self._update = client.register_script(_UPDATE)

    @property
    def ttl_s(self) -> int:
        return self._settings.file_retention_s

    async def create(self, body: BatchCreate, caller: Caller) -> Batch:
        source = await self.files.get(body.input_file_id, caller.scope)  # 404: unknown/others'
        if source.purpose != "batch":
            raise invalid_field(
                ("body", "input_file_id"), f"file {source.id} was not uploaded for a batch"
            )
        if body.webhook is not None:
            try:
                await asyncio.to_thread(
                    resolve_checked, body.webhook.url, self._settings.webhook_allowed_networks
                )
            except UnsafeUrl as exc:
                raise invalid_field(("body", "webhook", "url"), str(exc)) from None
        window = window_seconds(body.completion_window)
        if window > self._settings.job_ttl_s:
            raise invalid_field(
                ("body", "completion_window"),
                f"{body.completion_window} is longer than job records are kept "
                f"(STRUCTQ_JOB_TTL_S, {self._settings.job_ttl_s} s): the output is written "
                "from them",
            )
        now = int(time.time())
        batch = Batch(
            id=f"batch_{uuid.uuid4().hex}",
            endpoint=body.endpoint,
            input_file_id=source.id,
            completion_window=body.completion_window,
            status=BatchStatus.VALIDATING,
            created_at=now,
            expires_at=now + window,
            metadata=body.metadata,
            priority=body.priority,
            webhook=body.webhook,
            owner=caller.owner,
        )
        key = BATCH_PREFIX + batch.id
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(
                key,
                mapping={
                    "batch": self.dump(batch),
                    "status": batch.status.value,
                    "owner": caller.owner or "",
                },
            )
            pipe.expire(key, self.ttl_s)
            index = BATCHES_INDEX_PREFIX + (caller.owner or "")
            pipe.zadd(index, {batch.id: now})
            pipe.expire(index, self.ttl_s)
            pipe.zadd(BATCHES_ACTIVE, {batch.id: now})
            await pipe.execute()
        return batch

    @staticmethod
    def dump(batch: Batch) -> str:
        """The stored form: the public fields, and the two the API does not show."""
        data = batch.model_dump(mode="json", exclude={"webhook_deliveries"})
        data["owner"] = batch.owner
        data["webhook"] = None if batch.webhook is None else batch.webhook.model_dump(mode="json")
        return json.dumps(data)

    async def get(self, batch_id: str, scope: str | None) -> Batch:
        """The batch with its current request counts (kept beside its JSON by the driver), or
        404 (unknown, expired, or another key's)."""
        fields = ["batch", "owner", "total", "completed", "failed"]
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hmget(BATCH_PREFIX + batch_id, fields)
            pipe.lrange(hooks_key(batch_id), 0, -1)
            (raw, owner, total, completed, failed), hooks = cast(
                tuple[list[bytes | None], list[bytes]], await pipe.execute()
            )
        if raw is None or (scope is not None and (owner or b"").decode() != scope):
            raise BatchNotFound(f"no batch {batch_id!r}")
        counts = RequestCounts(
            total=int(total or 0), completed=int(completed or 0), failed=int(failed or 0)
        )
        attempts = [WebhookAttempt.model_validate_json(h) for h in hooks]
        return Batch.model_validate_json(raw).model_copy(
            update={"request_counts": counts, "webhook_deliveries": attempts}
        )

    async def list(self, owner: str | None, limit: int, after: str | None) -> list[Batch]:
        index = BATCHES_INDEX_PREFIX + (owner or "")
        ids = [i.decode() for i in cast(list[bytes], await self._redis.zrevrange(index, 0, -1))]
        if after is not None and after in ids:
            ids = ids[ids.index(after) + 1 :]
        out: list[Batch] = []
        for batch_id in ids:
            try:
                out.append(await self.get(batch_id, None))
            except BatchNotFound:
                await self._redis.zrem(index, batch_id)
                continue
            if len(out) == limit:
                break
        return out

    async def update(self, batch: Batch, allowed: tuple[BatchStatus, ...]) -> str | None:
        """Store ``batch`` if its stored status is one of ``allowed``: None, else the stored
        status ('' when the batch is gone). A batch with a webhook that ends here has its
        event's delivery stored and queued in the same step."""
        keys = [BATCH_PREFIX + batch.id]
        args = [" ".join(s.value for s in allowed), self.dump(batch), batch.status.value]
        event = batch.status.webhook_event
        if batch.webhook is not None and event is not None:
            delivery = await self._delivery(batch, batch.webhook.url, event)
            keys += [delivery_key(delivery.id), WEBHOOK_QUEUE]
            message = task_message(delivery.id, WEBHOOK_QUEUE, task=WEBHOOK_TASK_NAME)
            args += [delivery.model_dump_json(), message, str(self._settings.job_ttl_s)]
        result = await self._update(keys=keys, args=args)
        return None if result == 1 else (result or b"").decode()

    async def _delivery(self, batch: Batch, url: str, event: BatchWebhookEvent) -> WebhookDelivery:
        """The delivery of ``batch``'s end: its public record, with its final counts."""
        counts = await self._counts(batch.id)
        public = batch.model_copy(update={"request_counts": counts}).model_dump_json(
            exclude={"webhook_deliveries"}
        )
        payload = f'{{"type":"{event}","timestamp":"{utcnow().isoformat()}","data":{public}}}'
        return WebhookDelivery(
            id=f"msg_{uuid.uuid4().hex}", job_id=batch.id, event=event, url=url, payload=payload
        )

    async def _counts(self, batch_id: str) -> RequestCounts:
        total, completed, failed = cast(
            list[bytes | None],
            await self._redis.hmget(BATCH_PREFIX + batch_id, ["total", "completed", "failed"]),
        )
        return RequestCounts(
            total=int(total or 0), completed=int(completed or 0), failed=int(failed or 0)
        )

    async def cancel(self, batch_id: str, scope: str | None) -> Batch:
        """``cancelling``: the driver stops enqueueing lines, cancels the queued ones and aborts
        the running ones; what finished stays in the output."""
        for _ in range(10):
            batch = await self.get(batch_id, scope)
            if batch.status in (BatchStatus.CANCELLING, BatchStatus.CANCELLED):
                return batch
            if batch.status not in _LIVE:
                raise Conflict(
                    f"batch {batch_id} is {batch.status.value}; only a batch still running "
                    "can be cancelled",
                    status=batch.status.value,
                )
            cancelling = batch.model_copy(
                update={"status": BatchStatus.CANCELLING, "cancelling_at": int(time.time())}
            )
            if await self.update(cancelling, _LIVE) is None:
                return cancelling
        raise Conflict(f"batch {batch_id} kept changing; try again")
