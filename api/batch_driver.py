"""The batch driver: turns a batch's lines into jobs, follows them, and writes the batch's
output and error files. Every gateway process runs one; a batch is driven by one process at a
time (a lock with a short TTL, renewed every round), and another takes it over if that process
dies: everything the driver knows is in Redis.

A round of a batch (every STRUCTQ_BATCH_POLL_S):
- lines whose jobs all finished are counted (completed, or failed) and leave the in-flight set;
- while fewer than STRUCTQ_BATCH_MAX_IN_FLIGHT lines are in flight, the next lines are read,
  checked as ``POST /v1/jobs`` (or the OpenAI route) would check them, and stored as jobs at the
  batch's priority (lowest by default, so interactive jobs overtake it), many per script call.
  A line's job is created under an idempotency key of its own (batch id, line number): a
  driver that takes over re-reads from the last recorded line without duplicating a job. A bad
  line is recorded with the error a single request would get, and counts as failed;
- once every line is read and none is in flight, or the batch is cancelled or past its window
  (its unfinished jobs then cancelled, and waited for), the output and error files are written
  from the job records, streaming, in input order: one line in one of the two per input line.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, cast

import redis.asyncio as aioredis
from fastapi.exceptions import RequestValidationError

from api import batch_lines, metrics, service
from api.admission import Admission
from api.auth import Caller
from api.background import stop_tasks
from api.batch_output import BatchOutput
from api.batches import Batches
from api.files import Files
from api.settings import ApiSettings
from shared import lifecycle
from shared.async_store import AsyncJobStore
from shared.batches import Batch, BatchStatus
from shared.errors import BatchNotFound, ErrorCode, StructqError
from shared.jobs import JobStatus, is_terminal
from shared.keys import (
    BATCH_CUSTOM_IDS_PREFIX,
    BATCH_INFLIGHT_PREFIX,
    BATCH_LINES_PREFIX,
    BATCH_LOCK_PREFIX,
    BATCH_LOCK_TTL_S,
    BATCH_PREFIX,
    BATCHES_ACTIVE,
)
from shared.script_calls import NewJob

__all__ = ["BatchDriver"]

log = logging.getLogger(__name__)

# Lines stored per script call, and read back per round trip when writing the files.
_CHUNK = 200

_STOPPING = {BatchStatus.CANCELLING: BatchStatus.CANCELLED}


class _Run:
    """One batch as this process drives it: its input, read once, front to back."""

    def __init__(self, lines: AsyncIterator[bytes], start: int) -> None:
        self.lines = lines
        self.next_line = 0  # the input's next line number to read
        self.resume_at = start  # lines before this were stored by an earlier driver
        self.eof = False
        self.stopping_sent = False


class BatchDriver:
    def __init__(
        self,
        client: aioredis.Redis,
        store: AsyncJobStore,
        batches: Batches,
        files: Files,
        settings: ApiSettings,
        admission: Admission | None,
    ) -> None:
        self._redis = client
        self._store = store
        self._batches = batches
        self._files = files
        self._settings = settings
        self._admission = admission
        self._output = BatchOutput(client, store, batches, files)
        self._me = uuid.uuid4().hex
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._loop: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._loop = asyncio.create_task(self._watch(), name="structq-batch-driver")

    async def stop(self) -> None:
        await stop_tasks(self._loop, *self._tasks.values())

    async def _watch(self) -> None:
        """Take up every active batch no other process drives."""
        while True:
            try:
                active = cast(list[bytes], await self._redis.zrange(BATCHES_ACTIVE, 0, -1))
                for raw in active:
                    batch_id = raw.decode()
                    if batch_id in self._tasks:
                        continue
                    lock = BATCH_LOCK_PREFIX + batch_id
                    if await self._redis.set(lock, self._me, nx=True, ex=BATCH_LOCK_TTL_S):
                        self._tasks[batch_id] = asyncio.create_task(self._drive(batch_id))
            except Exception as exc:  # Redis away: look again next time
                log.warning("batch driver: %r", exc)
            await asyncio.sleep(self._settings.batch_poll_s)

    async def _drive(self, batch_id: str) -> None:
        lock = BATCH_LOCK_PREFIX + batch_id
        try:
            await self._rounds(batch_id, lock)
        finally:
            self._tasks.pop(batch_id, None)
            with contextlib.suppress(Exception):
                if await self._redis.get(lock) == self._me.encode():
                    await self._redis.delete(lock)

    async def _rounds(self, batch_id: str, lock: str) -> None:
        run: _Run | None = None
        while True:
            try:
                if await self._redis.get(lock) != self._me.encode():
                    return  # another process took over (this one stalled past the lock's TTL)
                await self._redis.expire(lock, BATCH_LOCK_TTL_S)
                batch = await self._batches.get(batch_id, None)
                if batch.status.terminal:
                    await self._redis.zrem(BATCHES_ACTIVE, batch_id)
                    return
                if run is None:
                    cursor = await self._redis.hget(BATCH_PREFIX + batch_id, "cursor")
                    run = _Run(self._files.lines(batch.input_file_id), int(cursor or 0))
                await self._round(batch, run)
            except BatchNotFound:
                await self._redis.zrem(BATCHES_ACTIVE, batch_id)
                return
            except Exception as exc:  # Redis away, or a bug: the next round tries again
                log.warning("batch %s: %r", batch_id, exc, exc_info=True)
                # Lines read but not recorded are read again, from the recorded cursor (their
                # jobs' idempotency keys keep them from being created twice).
                run = None
            await asyncio.sleep(self._settings.batch_poll_s)

    async def _round(self, batch: Batch, run: _Run) -> None:
        if batch.status is BatchStatus.VALIDATING:
            await self._validate(batch)
            return
        if batch.status is BatchStatus.FINALIZING:
            await self._output.finalize(batch)
            return
        in_flight = await self._follow(batch)
        expired = time.time() >= batch.expires_at
        cancelled = batch.status is BatchStatus.CANCELLING
        if cancelled or expired:
            if not run.stopping_sent:
                await self._stop_in_flight(batch, expired=not cancelled)
                run.stopping_sent = True
            if in_flight == 0:
                final = BatchStatus.CANCELLED if cancelled else BatchStatus.EXPIRED
                await self._to_finalizing(batch, final)
            return
        if not run.eof:
            in_flight = await self._enqueue(batch, run, in_flight)
        if run.eof and in_flight == 0:
            await self._to_finalizing(batch, BatchStatus.COMPLETED)

    async def _validate(self, batch: Batch) -> None:
        """``validating -> in_progress`` (its request count known), or ``failed``."""
        total = 0
        try:
            async for line in self._files.lines(batch.input_file_id):
                total += bool(line.strip())
        except Exception:
            total = 0
        now = int(time.time())
        if total == 0:
            error = {"code": "empty_file", "message": "the input file has no request lines"}
            failed = batch.model_copy(
                update={
                    "status": BatchStatus.FAILED,
                    "failed_at": now,
                    "errors": {"object": "list", "data": [{**error, "line": None}]},
                }
            )
            await self._batches.update(failed, (BatchStatus.VALIDATING,))
            return
        await self._redis.hset(BATCH_PREFIX + batch.id, "total", total)
        running = batch.model_copy(
            update={"status": BatchStatus.IN_PROGRESS, "in_progress_at": now}
        )
        await self._batches.update(running, (BatchStatus.VALIDATING,))

    async def _follow(self, batch: Batch) -> int:
        """Count the lines whose jobs all finished; how many are still in flight."""
        inflight_key = BATCH_INFLIGHT_PREFIX + batch.id
        members = cast(list[bytes], await self._redis.smembers(inflight_key))
        if not members:
            return 0
        numbers = [m.decode() for m in members]
        entries = cast(
            list[bytes | None], await self._redis.hmget(BATCH_LINES_PREFIX + batch.id, numbers)
        )
        jobs = [json.loads(e or b"{}").get("j", []) for e in entries]
        flat = [job_id for ids in jobs for job_id in ids]
        statuses = dict(zip(flat, await self._store.statuses(flat), strict=True))
        done, completed, failed = [], 0, 0
        for number, ids in zip(numbers, jobs, strict=True):
            states = [statuses.get(i) for i in ids]
            if all(s is None or is_terminal(s) for s in states):
                done.append(number)
                if states and all(s == b"succeeded" for s in states):
                    completed += 1
                else:
                    failed += 1
        if done:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.srem(inflight_key, *done)
                pipe.hincrby(BATCH_PREFIX + batch.id, "completed", completed)
                pipe.hincrby(BATCH_PREFIX + batch.id, "failed", failed)
                await pipe.execute()
        return len(numbers) - len(done)

    async def _enqueue(self, batch: Batch, run: _Run, in_flight: int) -> int:
        """Read and store lines until the window is full or the input ends."""
        window = self._settings.batch_max_in_flight
        caller = Caller(batch.owner or "anonymous", admin=False, owns_jobs=batch.owner is not None)
        while in_flight < window and not run.eof:
            entries: dict[Any, str] = {}  # line number -> its entry (JSON)
            parsed: list[tuple[int, batch_lines.Line]] = []
            while len(parsed) < _CHUNK and in_flight + len(parsed) < window:
                try:
                    raw = await anext(run.lines)
                except StopAsyncIteration:
                    run.eof = True
                    break
                number = run.next_line
                run.next_line += 1
                if not raw.strip() or number < run.resume_at:
                    continue
                try:
                    left_s = max(1.0, batch.expires_at - time.time())
                    line = batch_lines.parse(raw, number, batch.endpoint, self._settings, left_s)
                except batch_lines.LineRefused as exc:
                    entries[str(number)] = json.dumps({"c": exc.custom_id, "e": exc.entry()})
                    continue
                parsed.append((number, line))
            new: list[tuple[str, int, list[NewJob], int]] = []
            owners = await self._claim_custom_ids(batch, parsed)
            for (number, line), owner in zip(parsed, owners, strict=True):
                outcome = await self._prepare(batch, caller, line, number, owner)
                if isinstance(outcome, dict):
                    entries[str(number)] = json.dumps(outcome)
                else:
                    new.append(outcome)
            refused = len(entries)
            stored = await self._store_jobs(batch, caller, new)
            entries.update(stored)
            ids_in_flight = [str(number) for _, number, _, _ in new if str(number) in stored]
            async with self._redis.pipeline(transaction=True) as pipe:
                if entries:
                    pipe.hset(BATCH_LINES_PREFIX + batch.id, mapping=entries)
                    pipe.expire(BATCH_LINES_PREFIX + batch.id, self._batches.ttl_s)
                if ids_in_flight:
                    pipe.sadd(BATCH_INFLIGHT_PREFIX + batch.id, *ids_in_flight)
                    pipe.expire(BATCH_INFLIGHT_PREFIX + batch.id, self._batches.ttl_s)
                pipe.hincrby(BATCH_PREFIX + batch.id, "failed", refused)
                pipe.hset(BATCH_PREFIX + batch.id, "cursor", run.next_line)
                await pipe.execute()
            in_flight += len(ids_in_flight)
        return in_flight

    async def _claim_custom_ids(
        self, batch: Batch, parsed: list[tuple[int, batch_lines.Line]]
    ) -> list[int]:
        """Each line's custom_id claimed for it unless an earlier line has it, in one round
        trip: the line each custom_id belongs to (a re-read of the same line, in a takeover,
        finds its own number)."""
        if not parsed:
            return []
        cids = BATCH_CUSTOM_IDS_PREFIX + batch.id
        async with self._redis.pipeline(transaction=True) as pipe:
            for number, line in parsed:
                pipe.hsetnx(cids, line.custom_id, number)
            pipe.hmget(cids, [line.custom_id for _, line in parsed])
            pipe.expire(cids, self._batches.ttl_s)
            replies = await pipe.execute()
        return [int(owner) for owner in cast(list[bytes], replies[-2])]

    async def _prepare(
        self, batch: Batch, caller: Caller, line: batch_lines.Line, number: int, owner: int
    ) -> tuple[str, int, list[NewJob], int] | dict[str, Any]:
        """A parsed line's jobs, checked and built (not stored); or its error entry."""
        if owner != number:
            message = f"custom_id {line.custom_id!r} is already used by line {owner}"
            return {
                "c": line.custom_id,
                "e": {"status": 400, "code": ErrorCode.DUPLICATE_CUSTOM_ID, "message": message},
            }
        jobs = []
        for part, body in enumerate(line.bodies):
            body = body.model_copy(update={"priority": batch.priority})
            key = f"batch:{batch.id}:{number}:{part}"
            try:
                jobs.append(
                    await service.prepare(
                        self._settings, body, caller, key, self._admission, line.fit_max_tokens
                    )
                )
            except (StructqError, RequestValidationError) as exc:
                item = service.item_error(exc)
                error = item.error or {}
                return {
                    "c": line.custom_id,
                    "e": {
                        "status": item.status,
                        "code": error.get("code", ErrorCode.INVALID_REQUEST),
                        "message": error.get("message", ""),
                    },
                }
        return line.custom_id, number, jobs, line.n

    async def _store_jobs(
        self, batch: Batch, caller: Caller, new: list[tuple[str, int, list[NewJob], int]]
    ) -> dict[str, str]:
        """Store the lines' jobs in one script call; each line's entry."""
        flat = [job for _, _, jobs, _ in new for job in jobs]
        if not flat:
            return {}
        created = await self._store.create_many(flat, (0, 0), self._settings.idempotency_ttl_s)
        metrics.submitted(flat, created)
        entries: dict[Any, str] = {}
        position = 0
        for custom_id, number, jobs, n in new:
            ids = []
            for new_job, done in zip(jobs, created[position : position + len(jobs)], strict=True):
                ids.append(done.earlier_id if done.earlier_id else new_job.job.id)
            position += len(jobs)
            entries[str(number)] = json.dumps({"c": custom_id, "j": ids, "n": n})
        return entries

    async def _stop_in_flight(self, batch: Batch, expired: bool) -> None:
        """Stop the batch's unfinished jobs: a queued one of an expired batch ends ``expired``
        (its deadline is the batch's window), any other is cancelled."""
        members = cast(list[bytes], await self._redis.smembers(BATCH_INFLIGHT_PREFIX + batch.id))
        numbers = [m.decode() for m in members]
        if not numbers:
            return
        entries = cast(
            list[bytes | None], await self._redis.hmget(BATCH_LINES_PREFIX + batch.id, numbers)
        )
        ids = [i for e in entries for i in json.loads(e or b"{}").get("j", [])]
        for job in await self._store.get_many(ids):
            if job is None or job.status.terminal:
                continue
            if expired and job.status is JobStatus.QUEUED:
                if await self._store.apply(lifecycle.expire(job)) is None:
                    continue  # else it changed meanwhile (started): cancelled below
                job = await self._store.get(job.id) or job
            await service.cancel(self._store, job, f"batch {batch.id} stopped")

    async def _to_finalizing(self, batch: Batch, final: BatchStatus) -> None:
        await self._redis.hset(BATCH_PREFIX + batch.id, "final", final.value)
        finalizing = batch.model_copy(
            update={"status": BatchStatus.FINALIZING, "finalizing_at": int(time.time())}
        )
        await self._batches.update(finalizing, (BatchStatus.IN_PROGRESS, BatchStatus.CANCELLING))
