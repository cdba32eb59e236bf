"""The gateway's janitor: the periodic sweep that keeps jobs from getting stuck.

- A queued job past its deadline becomes ``expired`` even when no worker is there to see it
  (a pool scaled to zero, a backed-up queue).
- A running job whose worker's heartbeat is gone (the worker was SIGKILLed, its machine died)
  is queued again with a fresh message, or, after ``max_attempts`` runs, fails
  ``max_attempts_exceeded`` into the dead-letter list. A worker counts as gone once this
  janitor has seen its heartbeat missing for STRUCTQ_ORPHAN_GRACE_S while itself connected to
  Redis: heartbeats that lapsed during a Redis outage or failover are given that long to come
  back, so a live worker's jobs are never run twice. Each re-queue is refused, in the same
  script, if the worker's heartbeat is back (a stalled or cut-off worker that returned): once a
  worker has announced itself again, what its ledger says is its own stays so. Celery would
  re-deliver the message only after its visibility timeout (longer than any job may run).
- A queued job whose task message is in no queue and not held by a consumer that took it
  within the grace (a worker SIGKILLed after taking it, a pop whose reply a Redis restart
  lost) is given a fresh message, once: seen so in two rounds in a row, then re-queued by a
  guarded change that checks its message is still the lost one.
- Index entries older than the records' TTL are dropped.

It runs in the gateway because the gateway always runs, while worker pools may scale to zero.
Each round is taken by one gateway process at a time (a short Redis lock); every change it
makes is a guarded transition, so a second janitor would be harmless anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import time
from typing import cast

from api.metrics import janitor_did
from api.settings import ApiSettings
from shared import lifecycle
from shared.async_store import AsyncJobStore
from shared.jobs import JobStatus
from shared.keys import (
    ALL_INDEX,
    DEADLINES,
    JANITOR_LOCK,
    WORKERS_INDEX,
    client_index,
    job_key,
    model_queued_index,
    queue_lists,
    status_index,
    worker_jobs_key,
    worker_key,
)
from shared.redis_pools import decoded

__all__ = ["Janitor"]

log = logging.getLogger(__name__)

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
        self._reconciled_at = 0.0
        self._me = f"{os.getpid()}-{id(self)}"
        # Workers seen without a heartbeat: since when (monotonic), in rounds this process
        # reached Redis in. Forgotten whenever a round fails: an outage is no evidence.
        self._missing_since: dict[str, float] = {}
        # Queued jobs whose message was nowhere in the last reconciliation: job id -> tag.
        self._lost: dict[str, str] = {}

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
                await self._observe_workers()
                lock_ms = max(1, int(interval * 1000 * 0.9))
                if await self._redis.set(JANITOR_LOCK, self._me, nx=True, px=lock_ms):
                    await self.sweep()
            except Exception as exc:  # Redis down or a bad record: try again next round
                self._missing_since.clear()
                self._lost.clear()
                log.warning("janitor round failed: %r", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=interval)

    async def _observe_workers(self) -> None:
        """Note which workers hold claimed jobs without a heartbeat, and since when."""
        members = decoded(await self._redis.zrange(WORKERS_INDEX, 0, -1))
        async with self._redis.pipeline(transaction=False) as pipe:
            for worker in members:
                pipe.exists(worker_key(worker))
                pipe.exists(worker_jobs_key(worker))
            flags = await pipe.execute()
        now = time.monotonic()
        missing = set()
        for worker, alive, claimed in zip(members, flags[::2], flags[1::2], strict=True):
            if alive:
                continue
            if claimed:
                missing.add(worker)
            else:  # gone, and nothing of it left to recover
                await self._redis.zrem(WORKERS_INDEX, worker)
        for worker in list(self._missing_since):
            if worker not in missing:
                del self._missing_since[worker]
        for worker in missing:
            self._missing_since.setdefault(worker, now)

    def _gone(self, owner: str | None) -> bool:
        since = self._missing_since.get(owner or "")
        return since is not None and time.monotonic() - since >= self._settings.orphan_grace_s

    async def sweep(self) -> dict[str, int]:
        """One round; how many jobs it expired, recovered and re-sent."""
        expired = await self._expire_overdue()
        recovered = await self._recover_orphans()
        resent = 0
        if time.monotonic() - self._reconciled_at >= self._settings.reconcile_interval_s:
            resent = await self._reconcile()
            self._reconciled_at = time.monotonic()
        if time.monotonic() - self._trimmed_at > _TRIM_EVERY_S:
            await self._trim_indexes()
            self._trimmed_at = time.monotonic()
        return {"expired": expired, "recovered": recovered, "resent": resent}

    async def _expire_overdue(self) -> int:
        due = await self._redis.zrangebyscore(DEADLINES, "-inf", time.time(), start=0, num=_BATCH)
        ids = decoded(due)
        changes = []
        for job_id, job in zip(ids, await self._store.get_many(ids), strict=True):
            if job is None or job.status is not JobStatus.QUEUED:
                await self._redis.zrem(DEADLINES, job_id)
                continue
            changes.append(lifecycle.expire(job))
        expired = sum(outcome is None for outcome in await self._store.apply_many(changes))
        janitor_did("expired", expired)
        return expired

    async def _recover_orphans(self) -> int:
        count = 0
        for worker in [w for w in self._missing_since if self._gone(w)]:
            ledger = worker_jobs_key(worker)
            # redis-py annotates the reply as maybe-str; this client never decodes: bytes.
            entries = cast(dict[bytes, bytes], await self._redis.hgetall(ledger))
            claimed = {k.decode(): v.decode() for k, v in entries.items()}
            jobs = await self._store.get_many(list(claimed))
            changes = []
            for (job_id, run), job in zip(claimed.items(), jobs, strict=True):
                if job is None or job.status is not JobStatus.RUNNING:
                    await self._redis.hdel(ledger, job_id)  # its record expired meanwhile
                    continue
                reason = f"worker {worker} stopped while running it (no heartbeat)"
                change = lifecycle.fail_or_requeue(job, run, self._settings.max_attempts, reason)
                # Refused if the worker announced itself meanwhile: it was stalled or cut off,
                # not gone, and it now checks its claims itself (``worker.fencing``).
                changes.append(dataclasses.replace(change, unless_alive=worker))
            for change, outcome in zip(changes, await self._store.apply_many(changes), strict=True):
                assert change.job is not None
                if outcome == "alive":
                    log.info("job %s left to worker %s: it is back", change.job.id, worker)
                elif outcome is None:
                    count += 1
                    queued = change.job.status is JobStatus.QUEUED
                    janitor_did("requeued" if queued else "dead_lettered")
                    log.warning(
                        "job %s: worker %s stopped while running it (no heartbeat); %s",
                        change.job.id,
                        worker,
                        change.job.status.value,
                    )
        return count

    async def _reconcile(self) -> int:
        """Give a fresh message to queued jobs whose message is lost (see the module)."""
        grace_s = self._settings.orphan_grace_s
        lost: dict[str, str] = {}
        for model in self._settings.models:
            horizon_ms = (time.time() - grace_s) * 1000
            waiting = await self._redis.zrangebyscore(model_queued_index(model), "-inf", horizon_ms)
            if not waiting:
                continue
            ids = decoded(waiting)
            queued, taken = await self._store.messages(queue_lists(model))
            cutoff = time.time() - grace_s
            for job_id, tag in zip(ids, await self._store.message_tags(ids), strict=True):
                if tag is None or tag in queued or taken.get(tag, 0.0) > cutoff:
                    continue
                lost[job_id] = tag
        confirmed = {job_id: tag for job_id, tag in lost.items() if self._lost.get(job_id) == tag}
        self._lost = lost
        if not confirmed:
            return 0
        changes = []
        taken_after_ms = int((time.time() - grace_s) * 1000)
        for job in await self._store.get_many(list(confirmed)):
            if job is not None and job.status is JobStatus.QUEUED:
                changes.append(lifecycle.reenqueue(job, confirmed[job.id], taken_after_ms))
        outcomes = await self._store.apply_many(changes)
        resent = 0
        for change, outcome in zip(changes, outcomes, strict=True):
            assert change.job is not None
            if outcome is None:
                resent += 1
                self._lost.pop(change.job.id, None)
                log.warning("job %s: its task message was lost; queued a fresh one", change.job.id)
        janitor_did("reenqueued", resent)
        return resent

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
            gone = [m for m in decoded(old) if not await self._redis.exists(job_key(m))]
            if gone:
                await self._redis.zrem(index, *gone)
