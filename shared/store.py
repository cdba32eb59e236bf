"""The job store: job records in Redis, and the one atomic write every status change is.

A job is a Redis hash (``shared.keys.job_key``): ``status``, ``job`` (the whole record as
JSON), ``run`` and ``owner`` (attempt number and worker of the latest claim) and ``cancel``.
A status change rewrites them in one Lua script that first checks the current status (and,
for a run's own writes, that the run is still the current one), so two writers (a worker
finishing, a client cancelling, the janitor re-queueing) can never both win, and a reader
never sees a status that disagrees with the record. The same script keeps the indexes
(per-status sets, deadlines, dead letters) and pushes the job's task message when it queues
the job, so a queued job always has its message and a listed job always has its record.

Every script starts with a ``#!lua`` line: Redis then refuses a write script as a whole when
it is out of memory (``maxmemory`` with ``noeviction``), instead of failing it half-way.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import redis
import redis.asyncio as aioredis
from pydantic import ValidationError

from shared.celery_message import task_message
from shared.jobs import Job, JobStatus, utcnow
from shared.keys import (
    ALL_INDEX,
    CANCEL_CHANNEL,
    DEAD_LETTER,
    DEADLINES,
    DONE_CHANNEL,
    JOB_PREFIX,
    STATUS_INDEX_PREFIX,
    WEBHOOK_QUEUE,
    WEBHOOK_TASK_NAME,
    delivery_key,
    hooks_key,
    idempotency_key,
    job_key,
)

__all__ = [
    "AsyncJobStore",
    "Change",
    "Created",
    "JobStore",
    "dump_job",
    "is_terminal",
    "public_record",
]

# KEYS: 1 job hash, 2 all-jobs index, 3 deadlines, 4 dead letters, 5 queue list ('' none),
# 6 done channel, 7 webhook delivery hash ('' none), 8 webhook queue. ARGV: 1 new status,
# 2 record, 3 TTL s, 4 now (ms), 5 expected run ('' any), 6 new run ('' keep), 7 new owner
# ('' keep), 8 deadline (epoch s, '' none), 9 task message ('' none), 10 dead ('1' adds to the
# dead letters), 11 status index prefix, 12 job id, 13 webhook delivery spec ('' none),
# 14 webhook task message, then the statuses the job may be in. Returns 1 when applied, else
# the current status (false when the job does not exist).
_TRANSITION = """#!lua
local current = redis.call('HGET', KEYS[1], 'status')
if not current then return false end
local allowed = false
for i = 15, #ARGV do
  if current == ARGV[i] then allowed = true end
end
if not allowed then return current end
if ARGV[5] ~= '' and redis.call('HGET', KEYS[1], 'run') ~= ARGV[5] then return current end
local id, status = ARGV[12], ARGV[1]
redis.call('HSET', KEYS[1], 'status', status, 'job', ARGV[2])
if ARGV[6] ~= '' then redis.call('HSET', KEYS[1], 'run', ARGV[6]) end
if ARGV[7] ~= '' then redis.call('HSET', KEYS[1], 'owner', ARGV[7]) end
if status ~= 'running' then redis.call('HDEL', KEYS[1], 'cancel') end
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('ZREM', ARGV[11] .. current, id)
redis.call('ZADD', ARGV[11] .. status, ARGV[4], id)
local client = redis.call('HGET', KEYS[1], 'client')
if client then
  local own = ARGV[11] .. 'client:' .. client .. ':'
  redis.call('ZREM', own .. current, id)
  redis.call('ZADD', own .. status, ARGV[4], id)
end
local model = redis.call('HGET', KEYS[1], 'model')
if model then
  local waiting = ARGV[11] .. 'model:' .. model .. ':queued'
  if current == 'queued' then redis.call('ZREM', waiting, id) end
  if status == 'queued' then redis.call('ZADD', waiting, ARGV[4], id) end
end
redis.call('ZREM', KEYS[3], id)
if status == 'queued' and ARGV[8] ~= '' then redis.call('ZADD', KEYS[3], ARGV[8], id) end
if ARGV[10] == '1' then
  redis.call('ZADD', KEYS[4], ARGV[4], id)
else
  redis.call('ZREM', KEYS[4], id)
end
if ARGV[9] ~= '' then redis.call('LPUSH', KEYS[5], ARGV[9]) end
if status ~= 'queued' and status ~= 'running' then redis.call('PUBLISH', KEYS[6], id) end
if ARGV[13] ~= '' then
  redis.call('HSET', KEYS[7], 'spec', ARGV[13], 'attempts', 0, 'state', 'pending')
  redis.call('EXPIRE', KEYS[7], ARGV[3])
  redis.call('LPUSH', KEYS[8], ARGV[14])
end
return 1
"""

# KEYS: 1 job hash, 2 all-jobs index, 3 deadlines, 4 queue list, 5 idempotency key ('' none).
# ARGV: 1 record, 2 TTL s, 3 now (ms), 4 deadline ('' none), 5 task message, 6 status index
# prefix, 7 job id, 8 idempotency value ("<body hash> <job id>"), 9 idempotency TTL s,
# 10 client ('' none), 11 most queued jobs of one client (0: no limit), 12 most queued jobs of
# the model (0: no limit), 13 model. The per-model queued index counts jobs, not messages: a
# cancelled job's message still in the list does not count.
# Returns false when created, the idempotency key's value (an earlier job), or
# {limit name, current count} when a limit refuses the job (nothing written then).
_CREATE = """#!lua
if KEYS[5] ~= '' then
  local earlier = redis.call('GET', KEYS[5])
  if earlier then return earlier end
end
local id, client = ARGV[7], ARGV[10]
local waiting = ARGV[6] .. 'model:' .. ARGV[13] .. ':queued'
if ARGV[12] ~= '0' then
  local depth = redis.call('ZCARD', waiting)
  if depth >= tonumber(ARGV[12]) then return {'queue_depth', depth} end
end
local own = ARGV[6] .. 'client:' .. client .. ':'
if client ~= '' and ARGV[11] ~= '0' then
  local queued = redis.call('ZCARD', own .. 'queued')
  if queued >= tonumber(ARGV[11]) then return {'queued_per_client', queued} end
end
if KEYS[5] ~= '' then redis.call('SET', KEYS[5], ARGV[8], 'EX', ARGV[9]) end
redis.call('HSET', KEYS[1], 'status', 'queued', 'job', ARGV[1], 'run', '0', 'model', ARGV[13])
redis.call('ZADD', waiting, ARGV[3], id)
if client ~= '' then
  redis.call('HSET', KEYS[1], 'client', client)
  redis.call('ZADD', own .. 'all', ARGV[3], id)
  redis.call('ZADD', own .. 'queued', ARGV[3], id)
end
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], id)
redis.call('ZADD', ARGV[6] .. 'queued', ARGV[3], id)
if ARGV[4] ~= '' then redis.call('ZADD', KEYS[3], ARGV[4], id) end
redis.call('LPUSH', KEYS[4], ARGV[5])
return false
"""

# KEYS: 1 job hash, 2 cancel channel. ARGV: 1 job id. A running job gets its cancel flag and
# its worker is told; returns the current status (false when the job does not exist).
_REQUEST_CANCEL = """#!lua
local current = redis.call('HGET', KEYS[1], 'status')
if current == 'running' then
  redis.call('HSET', KEYS[1], 'cancel', '1')
  redis.call('PUBLISH', KEYS[2], ARGV[1])
end
return current
"""

# KEYS: 1 job hash, 2 all-jobs index, 3 dead letters. ARGV: 1 job id, 2 status index prefix.
# Deletes a finished job; returns the current status (false when the job does not exist).
_DELETE = """#!lua
local current = redis.call('HGET', KEYS[1], 'status')
if not current then return false end
if current == 'queued' or current == 'running' then return current end
local client = redis.call('HGET', KEYS[1], 'client')
if client then
  local own = ARGV[2] .. 'client:' .. client .. ':'
  redis.call('ZREM', own .. 'all', ARGV[1])
  redis.call('ZREM', own .. current, ARGV[1])
end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', ARGV[2] .. current, ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
return 1
"""

# KEYS: a model's queue lists. ARGV: 1 job key prefix. Removes the messages of jobs that are
# no longer queued (cancelled, purged, expired): workers would only skip them, and they would
# inflate the queue length an autoscaler reads. Returns how many it removed.
_DROP_STALE = """#!lua
local removed = 0
for _, list in ipairs(KEYS) do
  for _, message in ipairs(redis.call('LRANGE', list, 0, -1)) do
    local ok, decoded = pcall(cjson.decode, message)
    if ok and type(decoded) == 'table' and type(decoded.headers) == 'table' then
      local task_id = tostring(decoded.headers.id or '')
      local job_id = string.match(task_id, '^([^~]+)') or task_id
      local status = redis.call('HGET', ARGV[1] .. job_id, 'status')
      if status ~= 'queued' then
        removed = removed + redis.call('LREM', list, 1, message)
      end
    end
  end
end
return removed
"""


def _visible(owner: bytes | None, client: str | None) -> bool:
    """Whether ``client`` may see a job ``owner`` submitted (None: any client may)."""
    return client is None or (owner is not None and owner.decode() == client)


def dump_job(job: Job) -> str:
    # by_alias: a JSON Schema spec is stored (and returned) under the key clients use, `schema`.
    return job.model_dump_json(by_alias=True)


def is_terminal(status: bytes | str | None) -> bool:
    if isinstance(status, bytes):
        status = status.decode()
    return status is not None and JobStatus(status).terminal


def public_record(raw: bytes, hooks: Sequence[bytes]) -> bytes:
    """The stored record JSON with its webhook attempts added: what the API returns."""
    return raw[:-1] + b',"webhook_deliveries":[' + b",".join(hooks) + b"]}"


def _decode(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


def _now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True, slots=True)
class Change:
    """One status change: the new record and what guards and accompanies it."""

    job: Job
    allowed: Sequence[JobStatus]
    expected_run: int | None = None  # a run's own write: only while it is the current run
    claim_by: str | None = None  # a claim: the new run is job.attempts, owned by this worker
    queue_list: str | None = None  # (re-)queueing: where its message goes
    message: str | None = None
    dead: bool = False

    def webhook_event(self) -> str | None:
        """The webhook event this change makes due, if the job asked for it: ``started`` on
        its first claim (after submission or a retry), ``completed`` on any terminal status."""
        hook = self.job.webhook
        if hook is None:
            return None
        if self.claim_by is not None and self.job.attempts == 1 and "started" in hook.events:
            return "started"
        if self.job.status.terminal and "completed" in hook.events:
            return "completed"
        return None

    def keys(self, delivery_id: str = "") -> list[str]:
        return [
            job_key(self.job.id),
            ALL_INDEX,
            DEADLINES,
            DEAD_LETTER,
            self.queue_list or "",
            DONE_CHANNEL,
            delivery_key(delivery_id) if delivery_id else "",
            WEBHOOK_QUEUE,
        ]

    def args(self, ttl_s: int) -> tuple[list[str], list[str | int | float]]:
        """(KEYS, ARGV) of the transition script."""
        job = self.job
        deadline = job.deadline_ts()
        record = dump_job(job)
        delivery_id, spec, message = "", "", ""
        event = self.webhook_event()
        if event is not None and job.webhook is not None:
            delivery_id = f"msg_{uuid.uuid4().hex}"
            payload = (
                f'{{"type":"job.{event}","timestamp":"{utcnow().isoformat()}","data":{record}}}'
            )
            spec = json.dumps(
                {
                    "id": delivery_id,
                    "job_id": job.id,
                    "event": event,
                    "url": job.webhook.url,
                    "payload": payload,
                }
            )
            message = task_message(delivery_id, WEBHOOK_QUEUE, task=WEBHOOK_TASK_NAME)
        return self.keys(delivery_id), [
            job.status.value,
            record,
            ttl_s,
            _now_ms(),
            "" if self.expected_run is None else str(self.expected_run),
            "" if self.claim_by is None else str(job.attempts),
            self.claim_by or "",
            "" if deadline is None else deadline,
            self.message or "",
            "1" if self.dead else "",
            STATUS_INDEX_PREFIX,
            job.id,
            spec,
            message,
            *(s.value for s in self.allowed),
        ]


@dataclass(frozen=True, slots=True)
class Created:
    """What `AsyncJobStore.create` did: stored the job, or found the idempotency key's job."""

    record: bytes | None  # the public record JSON, when created
    earlier_id: str | None = None  # the job an Idempotency-Key already names
    earlier_hash: str | None = None  # the body hash that key was used with
    refused: tuple[str, int] | None = None  # (limit, current count): a limit refused the job


class JobStore:
    """Synchronous store, used by the worker's task threads (redis-py clients are thread-safe)."""

    def __init__(self, client: redis.Redis, ttl_s: int) -> None:
        self._redis = client
        self._ttl_s = ttl_s
        self._transition = client.register_script(_TRANSITION)

    def get(self, job_id: str) -> Job | None:
        raw = self._redis.hget(job_key(job_id), "job")
        return None if raw is None else Job.model_validate_json(raw)

    def get_readable(self, job_id: str) -> tuple[Job | None, str | None]:
        """The job, and why this process cannot run it as written (None: it can). A record
        that does not validate (e.g. written by a newer gateway, with fields this worker does
        not know) comes back read leniently, known fields only, so it can still be failed."""
        raw = self._redis.hget(job_key(job_id), "job")
        if raw is None:
            return None, None
        try:
            return Job.model_validate_json(raw), None
        except ValidationError as exc:
            problem = "; ".join(
                f"{'.'.join(map(str, e['loc'])) or 'record'}: {e['msg']}" for e in exc.errors()
            )
        fields = json.loads(raw)
        known = {k: v for k, v in fields.items() if k in Job.model_fields}
        try:
            return Job.model_validate(known), problem
        except ValidationError:
            return None, problem

    def cancel_requested(self, job_id: str) -> bool:
        return bool(self._redis.hexists(job_key(job_id), "cancel"))

    def apply(self, change: Change) -> bool:
        """Store ``change.job`` if the stored job is in one of ``change.allowed``."""
        keys, args = change.args(self._ttl_s)
        return self._transition(keys=keys, args=args) == 1

    def transition(self, job: Job, allowed: Iterable[JobStatus]) -> bool:
        return self.apply(Change(job, tuple(allowed)))


class AsyncJobStore:
    """Asynchronous store, used by the gateway (its routes and its janitor)."""

    def __init__(self, client: aioredis.Redis, ttl_s: int) -> None:
        self._redis = client
        self._ttl_s = ttl_s
        self._create = client.register_script(_CREATE)
        self._transition = client.register_script(_TRANSITION)
        self._request_cancel = client.register_script(_REQUEST_CANCEL)
        self._delete = client.register_script(_DELETE)
        self._drop_stale = client.register_script(_DROP_STALE)

    @property
    def redis(self) -> aioredis.Redis:
        return self._redis

    async def create(
        self,
        job: Job,
        queue_list: str,
        message: str,
        idempotency: tuple[str, str, str, int] | None = None,
        limits: tuple[int, int] = (0, 0),
    ) -> Created:
        """Store a queued job and push its task message, all or nothing.

        ``idempotency`` is (client, key, body hash, TTL s): when that key already names a job,
        nothing is written and the earlier job's id and body hash come back instead.
        ``limits`` is (most queued jobs of the job's client, deepest queue of its model; 0:
        none): past one, nothing is written and ``refused`` says which.
        """
        record = dump_job(job)
        deadline = job.deadline_ts()
        idem_key, idem_value, idem_ttl = "", "", 0
        if idempotency is not None:
            client, key, body_hash, idem_ttl = idempotency
            idem_key, idem_value = idempotency_key(client, key), f"{body_hash} {job.id}"
        earlier = await self._create(
            keys=[job_key(job.id), ALL_INDEX, DEADLINES, queue_list, idem_key],
            args=[
                record,
                self._ttl_s,
                _now_ms(),
                "" if deadline is None else deadline,
                message,
                STATUS_INDEX_PREFIX,
                job.id,
                idem_value,
                idem_ttl,
                job.client or "",
                limits[0],
                limits[1],
                job.model,
            ],
        )
        if isinstance(earlier, list):
            return Created(None, refused=(_decode(earlier[0]) or "", int(earlier[1])))
        if earlier:
            body_hash, _, job_id = _decode(earlier).partition(" ")
            return Created(None, earlier_id=job_id, earlier_hash=body_hash)
        return Created(public_record(record.encode(), []))

    async def get_raw(
        self, job_id: str, client: str | None = None
    ) -> tuple[bytes | None, bytes | None]:
        """The stored status and the public record JSON (``JobPublic``); Nones when unknown,
        or, with ``client``, when another client submitted it."""
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hmget(job_key(job_id), ["status", "job", "client"])
            pipe.lrange(hooks_key(job_id), 0, -1)
            (status, raw, owner), hooks = await pipe.execute()
        if raw is None or not _visible(owner, client):
            return None, None
        return status, public_record(raw, hooks)

    async def get(self, job_id: str, client: str | None = None) -> Job | None:
        """The job (None: unknown, or with ``client``, another client's)."""
        raw, owner = await self._redis.hmget(job_key(job_id), ["job", "client"])
        if raw is None or not _visible(owner, client):
            return None
        return Job.model_validate_json(raw)

    async def get_many_raw(self, job_ids: Sequence[str]) -> list[bytes | None]:
        """Public record JSON of each job (None where unknown)."""
        if not job_ids:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hget(job_key(job_id), "job")
                pipe.lrange(hooks_key(job_id), 0, -1)
            rows = await pipe.execute()
        return [
            None if raw is None else public_record(raw, hooks)
            for raw, hooks in zip(rows[::2], rows[1::2], strict=True)
        ]

    async def get_many(self, job_ids: Sequence[str]) -> list[Job | None]:
        if not job_ids:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hget(job_key(job_id), "job")
            raws = await pipe.execute()
        return [None if raw is None else Job.model_validate_json(raw) for raw in raws]

    async def owners(self, job_ids: Sequence[str]) -> list[tuple[str | None, str | None]]:
        """(owner, run) of each job."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hmget(job_key(job_id), ["owner", "run"])
            rows = await pipe.execute()
        return [(_decode(owner), _decode(run)) for owner, run in rows]

    async def apply(self, change: Change) -> str | None:
        """Apply a status change; None when applied, else the current status ('' if the job
        does not exist)."""
        keys, args = change.args(self._ttl_s)
        done = await self._transition(keys=keys, args=args)
        if done == 1:
            return None
        return _decode(done) or ""

    async def request_cancel(self, job_id: str) -> str | None:
        """Flag a running job for cancelling and tell the workers; its status (None: unknown)."""
        keys = [job_key(job_id), CANCEL_CHANNEL]
        return _decode(await self._request_cancel(keys=keys, args=[job_id]))

    async def delete(self, job_id: str) -> str | None:
        """Delete a finished job; None when deleted, else its status ('' when unknown)."""
        done = await self._delete(
            keys=[job_key(job_id), ALL_INDEX, DEAD_LETTER], args=[job_id, STATUS_INDEX_PREFIX]
        )
        if done == 1:
            return None
        return _decode(done) or ""

    async def drop_stale_messages(self, queue_lists: Sequence[str]) -> int:
        return int(await self._drop_stale(keys=list(queue_lists), args=[JOB_PREFIX]))

    async def page(
        self, index: str, limit: int, before: tuple[int, str] | None
    ) -> list[tuple[str, int]]:
        """Up to ``limit`` (job id, score) of ``index``, newest first, strictly before the
        cursor ``(score, id)`` when one is given."""
        top: str | int = "+inf" if before is None else before[0]
        rows = await self._redis.zrevrangebyscore(
            index, top, "-inf", start=0, num=limit + 64, withscores=True
        )
        out: list[tuple[str, int]] = []
        for member, score in rows:
            job_id, score = _decode(member) or "", int(score)
            # Equal scores come in reverse lexicographic order; skip up to the cursor's id.
            if before is not None and score == before[0] and job_id >= before[1]:
                continue
            out.append((job_id, score))
            if len(out) == limit:
                break
        return out

    async def forget(self, index: str, job_ids: Sequence[str]) -> None:
        """Drop index entries whose records are gone (expired past their TTL)."""
        if job_ids:
            await self._redis.zrem(index, *job_ids)
