"""The worker's job store: job records in Redis, read and written only through here (the
gateway's is ``shared.async_store``).

A job is a Redis hash (``shared.keys.job_key``; its fields are listed there), and every write is
one of the Lua scripts of ``shared.scripts``, applying changes built by ``shared.lifecycle``.
Many changes go in one script call: the worker claims every job it takes, and records every job
an engine step finished, in one round trip each. redis-py's clients are thread-safe: the
worker's threads share one store.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass

import redis
from pydantic import ValidationError

from shared import scripts
from shared.jobs import Job, join_record
from shared.keys import (
    JOB_PREFIX,
    JOBS_TRANSPORT,
    bell_key,
    job_key,
    queue_lists,
    queue_name,
    worker_cancels_key,
    worker_jobs_key,
)
from shared.lifecycle import Change
from shared.script_calls import Created, NewJob, ScriptCalls, created, outcomes

__all__ = ["JobStore", "Stored", "read_job"]


@dataclass(frozen=True, slots=True)
class Stored:
    """A job's hash as the worker reads it before claiming: status, spec, state, current
    message tag (None where the job does not exist)."""

    status: bytes | None
    spec: bytes | None
    state: bytes | None
    msg: bytes | None


def read_job(stored: Stored) -> tuple[Job | None, str | None]:
    """The job, and why this process cannot run it as written (None: it can). A record that
    does not validate (e.g. written by a newer gateway, with fields this worker does not know)
    comes back read leniently, known fields only, so that it can still be failed."""
    if stored.spec is None or stored.state is None:
        return None, None
    raw = join_record(stored.spec, stored.state)
    try:
        return Job.from_parts(stored.spec, stored.state), None
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


class JobStore:
    """Synchronous store, used by the worker (redis-py clients are thread-safe)."""

    def __init__(self, client: redis.Redis, ttl_s: int) -> None:
        self._redis = client
        self._calls = ScriptCalls(ttl_s)
        self._transition = client.register_script(scripts.TRANSITION)
        self._create = client.register_script(scripts.CREATE)
        self._take = client.register_script(scripts.TAKE)

    @property
    def redis(self) -> redis.Redis:
        return self._redis

    def take(self, model: str, most: int) -> list[tuple[str, Stored]]:
        """Take up to ``most`` of ``model``'s job messages (highest priority first), as kombu's
        consumer takes a message, with each one's job as stored: (message tag, job)."""
        keys = [
            *queue_lists(model),
            JOBS_TRANSPORT["unacked_key"],
            JOBS_TRANSPORT["unacked_index_key"],
            bell_key(model),
        ]
        rows = self._take(keys=keys, args=[most, time.time(), queue_name(model), JOB_PREFIX])
        return [(tag.decode(), Stored(*fields)) for tag, *fields in rows]

    def read_many(self, job_ids: Sequence[str]) -> list[Stored]:
        """Each job's status, spec, state and current message tag, in one round trip."""
        with self._redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hmget(job_key(job_id), ["status", "spec", "state", "msg"])
            rows = pipe.execute()
        return [Stored(*row) for row in rows]

    def get(self, job_id: str) -> Job | None:
        stored = self.read_many([job_id])[0]
        return read_job(stored)[0]

    def apply_many(self, changes: Sequence[Change]) -> list[str | None]:
        """Apply the changes in one script call; per change, None when applied, else the
        job's current status (see ``_outcomes``)."""
        if not changes:
            return []
        keys, args = self._calls.transition(changes)
        return outcomes(self._transition(keys=keys, args=args))

    def apply(self, change: Change) -> bool:
        return self.apply_many([change])[0] is None

    def create(self, job: Job) -> Created:
        """Store a queued job with its message (tests and tools; the gateway is async)."""
        keys, args, records = self._calls.create([NewJob(job)], (0, 0), 1)
        return created(self._create(keys=keys, args=args), records)[0]

    def ledger(self, worker_id: str) -> tuple[dict[str, str], set[str]]:
        """The jobs ``worker_id`` has claimed and not finished (id -> run token), and those of
        them a client asked to cancel."""
        with self._redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(worker_jobs_key(worker_id))
            pipe.smembers(worker_cancels_key(worker_id))
            jobs, cancels = pipe.execute()
        return (
            {k.decode(): v.decode() for k, v in jobs.items()},
            {c.decode() for c in cancels},
        )
