"""The gateway's janitor: the periodic sweep that keeps jobs from getting stuck.

- A queued job past its deadline becomes ``expired`` even when no worker is there to see it
  (a pool scaled to zero, a backed-up queue).
- A running job whose worker's heartbeat key is gone (the worker was SIGKILLed, its machine
  died) is queued again with a fresh message, or, after ``max_attempts`` runs, fails
  ``max_attempts_exceeded`` into the dead-letter list. Celery would re-deliver the message
  only after its visibility timeout (longer than any job may run); this takes a heartbeat TTL.
- Index entries older than the records' TTL are dropped.

It runs in the gateway because the gateway always runs, while worker pools may scale to zero.
Each round is taken by one gateway process at a time (a short Redis lock); every change it
makes is a guarded transition, so a second janitor would be harmless anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time

from api.settings import ApiSettings
from shared import lifecycle
from shared.jobs import JobStatus
from shared.keys import (
    ALL_INDEX,
    DEADLINES,
    JOB_PREFIX,
    WORKER_PREFIX,
    client_index,
    model_queued_index,
    status_index,
)
from shared.store import AsyncJobStore

__all__ = ["Janitor"]

log = logging.getLogger(__name__)

_LOCK = "structq:janitor"
_BATCH = 500
_TRIM_EVERY_S = 60.0


class Janitor:
    def __init__(self, store: AsyncJobStore, settings: ApiSettings) -> None:
        self._store = store
        self._redis = store.redis
        self._settings = settings
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._trimmed_at = 0.0
        self._me = f"{os.getpid()}-{id(self)}"

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="structq-janitor")

    async def stop(self) -> None:
        # The loop ends after its current round. (Not Task.cancel: a cancel that lands inside
        # a Redis call's timeout handling can be turned into an error and lost.)
        self._stopping.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, timeout=10)
            except TimeoutError:
                log.warning("janitor did not stop in time; abandoning its round")

    async def _loop(self) -> None:
        interval = self._settings.janitor_interval_s
        while not self._stopping.is_set():
            try:
                lock_ms = max(1, int(interval * 1000 * 0.9))
                if await self._redis.set(_LOCK, self._me, nx=True, px=lock_ms):
                    await self.sweep()
            except Exception as exc:  # Redis down or a bad record: try again next round
                log.warning("janitor round failed: %r", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=interval)

    async def sweep(self) -> dict[str, int]:
        """One round; how many jobs it expired and recovered."""
        expired = await self._expire_overdue()
        recovered = await self._recover_orphans()
        if time.monotonic() - self._trimmed_at > _TRIM_EVERY_S:
            await self._trim_indexes()
            self._trimmed_at = time.monotonic()
        return {"expired": expired, "recovered": recovered}

    async def _expire_overdue(self) -> int:
        due = await self._redis.zrangebyscore(DEADLINES, "-inf", time.time(), start=0, num=_BATCH)
        count = 0
        for member in due:
            job_id = member.decode()
            job = await self._store.get(job_id)
            if job is None or job.status is not JobStatus.QUEUED:
                await self._redis.zrem(DEADLINES, job_id)
                continue
            if await self._store.apply(lifecycle.expire(job)) is None:
                count += 1
        return count

    async def _recover_orphans(self) -> int:
        running = [m.decode() for m in await self._redis.zrange(status_index("running"), 0, -1)]
        if not running:
            return 0
        live = {
            key.decode().removeprefix(WORKER_PREFIX)
            async for key in self._redis.scan_iter(match=f"{WORKER_PREFIX}*", count=1000)
        }
        count = 0
        for job_id, (owner, run) in zip(running, await self._store.owners(running), strict=True):
            if owner in live:
                continue
            job = await self._store.get(job_id)
            if job is None:
                await self._redis.zrem(status_index("running"), job_id)
                continue
            if job.status is not JobStatus.RUNNING or str(job.attempts) != run:
                continue
            reason = f"worker {owner} stopped while running it (no heartbeat)"
            change = lifecycle.fail_or_requeue(job, self._settings.max_attempts, reason)
            if await self._store.apply(change) is None:
                count += 1
                log.warning("job %s: %s; %s", job_id, reason, change.job.status.value)
        return count

    async def _trim_indexes(self) -> None:
        settings = self._settings
        horizon_ms = (time.time() - settings.job_ttl_s) * 1000
        # A record lives job_ttl_s after its last change, which may be well after creation.
        all_horizon_ms = horizon_ms - (settings.job_ttl_s + settings.max_run_s) * 1000
        owners = [key.name for key in settings.api_keys]
        for status in JobStatus:
            if status.terminal:
                await self._redis.zremrangebyscore(status_index(status.value), "-inf", horizon_ms)
                for owner in owners:
                    index = client_index(owner, status.value)
                    await self._redis.zremrangebyscore(index, "-inf", horizon_ms)
        await self._redis.zremrangebyscore(ALL_INDEX, "-inf", all_horizon_ms)
        for owner in owners:
            await self._redis.zremrangebyscore(client_index(owner), "-inf", all_horizon_ms)
        # Queued entries whose record expired (queued longer than job_ttl_s, no deadline):
        # they would count against the queue-depth and per-key limits for ever.
        waiting = [model_queued_index(model) for model in settings.models]
        waiting += [client_index(owner, JobStatus.QUEUED.value) for owner in owners]
        for index in waiting:
            old = await self._redis.zrangebyscore(index, "-inf", horizon_ms, start=0, num=_BATCH)
            gone = [m for m in old if not await self._redis.exists(JOB_PREFIX + m.decode())]
            if gone:
                await self._redis.zrem(index, *gone)
