"""The job store: job records in Redis, and the one atomic write every status change is.

A job is a Redis hash (``shared.keys.job_key``) with two fields: ``status`` and ``job`` (the
whole record as JSON). A status change rewrites both in one Lua script that first checks
the current status, so two writers (a worker finishing, a client cancelling) can never
both win, and a reader never sees a status that disagrees with the record.
"""

from __future__ import annotations

from collections.abc import Iterable

import redis
import redis.asyncio as aioredis

from shared.jobs import Job, JobStatus
from shared.keys import DONE_CHANNEL, job_key

__all__ = ["AsyncJobStore", "JobStore", "dump_job", "is_terminal"]

# KEYS[1]: the job hash, KEYS[2]: the done channel. ARGV: new status, new record JSON, TTL
# seconds, job id to publish on the done channel ('' for none), then the statuses the job may
# be in for the change to apply. Returns 1 when applied, else the current status (nil when the
# job does not exist).
_TRANSITION = """
local current = redis.call('HGET', KEYS[1], 'status')
if not current then return nil end
for i = 5, #ARGV do
  if current == ARGV[i] then
    redis.call('HSET', KEYS[1], 'status', ARGV[1], 'job', ARGV[2])
    redis.call('EXPIRE', KEYS[1], ARGV[3])
    if ARGV[4] ~= '' then redis.call('PUBLISH', KEYS[2], ARGV[4]) end
    return 1
  end
end
return current
"""

# KEYS[1]: the job hash, KEYS[2]: its queue. ARGV: status, record JSON, TTL, task message.
# One script rather than MULTI/EXEC: as atomic, and one command for the gateway to send.
_CREATE = """
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'job', ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('LPUSH', KEYS[2], ARGV[4])
"""

_TERMINAL = frozenset(s.value for s in JobStatus if s.terminal)


def dump_job(job: Job) -> str:
    # by_alias: a JSON Schema spec is stored (and returned) under the key clients use, `schema`.
    return job.model_dump_json(by_alias=True)


def is_terminal(status: bytes | str | None) -> bool:
    if isinstance(status, bytes):
        status = status.decode()
    return status in _TERMINAL


def _transition_args(job: Job, allowed: Iterable[JobStatus], ttl_s: int) -> list[str | int]:
    announce = job.id if job.status.terminal else ""
    return [job.status.value, dump_job(job), ttl_s, announce, *(s.value for s in allowed)]


class JobStore:
    """Synchronous store, used by the worker's task threads (redis-py clients are thread-safe)."""

    def __init__(self, client: redis.Redis, ttl_s: int) -> None:
        self._redis = client
        self._ttl_s = ttl_s
        self._transition = client.register_script(_TRANSITION)

    def get(self, job_id: str) -> Job | None:
        raw = self._redis.hget(job_key(job_id), "job")
        return None if raw is None else Job.model_validate_json(raw)

    def transition(self, job: Job, allowed: Iterable[JobStatus]) -> bool:
        """Store ``job`` (carrying its new status) if its stored status is one of ``allowed``."""
        done = self._transition(
            keys=[job_key(job.id), DONE_CHANNEL], args=_transition_args(job, allowed, self._ttl_s)
        )
        return done == 1


class AsyncJobStore:
    """Asynchronous store, used by the gateway."""

    def __init__(self, client: aioredis.Redis, ttl_s: int) -> None:
        self._redis = client
        self._ttl_s = ttl_s
        self._create = client.register_script(_CREATE)

    async def create(self, job: Job, queue: str, message: str) -> str:
        """Store a queued job and push its task message, all or nothing; the stored JSON."""
        record = dump_job(job)
        await self._create(
            keys=[job_key(job.id), queue], args=[job.status.value, record, self._ttl_s, message]
        )
        return record

    async def get_raw(self, job_id: str) -> tuple[bytes | None, bytes | None]:
        """The stored status and record JSON (already the public shape); Nones when unknown."""
        status, raw = await self._redis.hmget(job_key(job_id), ["status", "job"])
        return status, raw
