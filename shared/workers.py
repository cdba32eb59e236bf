"""The registry of live workers: who announced themselves (``worker.heartbeat``), read without
scanning the keyspace (``shared.keys.WORKERS_INDEX`` lists them). Replies are bytes (no client
decodes responses; redis-py's annotations allow str too, hence the casts)."""

from __future__ import annotations

from typing import cast

import redis
import redis.asyncio as aioredis

from shared.keys import WORKERS_INDEX, worker_key
from shared.records import WorkerAnnouncement

__all__ = ["live_workers", "live_workers_sync"]


def _parse(raws: list[bytes | None]) -> list[WorkerAnnouncement]:
    return [WorkerAnnouncement.model_validate_json(raw) for raw in raws if raw is not None]


async def live_workers(client: aioredis.Redis) -> list[WorkerAnnouncement]:
    """Every worker whose announcement has not expired."""
    members = cast(list[bytes], await client.zrange(WORKERS_INDEX, 0, -1))
    if not members:
        return []
    keys = [worker_key(m.decode()) for m in members]
    return _parse(cast(list[bytes | None], await client.mget(keys)))


def live_workers_sync(client: redis.Redis) -> list[WorkerAnnouncement]:
    members = cast(list[bytes], client.zrange(WORKERS_INDEX, 0, -1))
    if not members:
        return []
    keys = [worker_key(m.decode()) for m in members]
    return _parse(cast(list[bytes | None], client.mget(keys)))
