"""The job store: job records in Redis, read and written only through here.

A job is a Redis hash (``shared.keys.job_key``; its fields are listed there), and every write is
one of the Lua scripts of ``shared.scripts``, applying changes built by ``shared.lifecycle``.
Many changes (or many new jobs) go in one script call: the worker writes every job an engine
step finished in one round trip, the gateway stores a batch of jobs in one.

Two stores with one layout of script arguments (``_Calls``): ``JobStore`` (synchronous, for the
worker's threads) and ``AsyncJobStore`` (for the gateway and its janitor).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis
import redis.asyncio as aioredis
from pydantic import ValidationError

from shared import scripts
from shared.celery_message import task_message
from shared.jobs import Job, join_record
from shared.keys import (
    ALL_INDEX,
    CANCEL_CHANNEL,
    CLIENT_INDEX_PREFIX,
    DEAD_LETTER,
    DEADLINES,
    DONE_CHANNEL,
    HOOKS_PREFIX,
    JOB_PREFIX,
    JOBS_TRANSPORT,
    MODEL_QUEUED_PREFIX,
    STATUS_INDEX_PREFIX,
    WEBHOOK_QUEUE,
    WEBHOOK_TASK_NAME,
    WORKER_CANCELS_PREFIX,
    WORKER_JOBS_PREFIX,
    bell_key,
    delivery_key,
    hooks_key,
    idempotency_key,
    job_key,
    model_queued_index,
    queue_lists,
    queue_name,
    worker_cancels_key,
    worker_jobs_key,
)
from shared.lifecycle import Change, enqueue_message

__all__ = [
    "AsyncJobStore",
    "Created",
    "JobStore",
    "NewJob",
    "Stored",
    "is_terminal",
    "public_record",
    "read_job",
]

_TERMINAL = {b"succeeded", b"failed", b"cancelled", b"expired"}


def is_terminal(status: bytes | str | None) -> bool:
    if isinstance(status, str):
        status = status.encode()
    return status in _TERMINAL


def public_record(spec: bytes, state: bytes, hooks: Sequence[bytes]) -> bytes:
    """The stored job as the API returns it (``JobPublic``): spec, state and webhook attempts."""
    return join_record(spec, state)[:-1] + b',"webhook_deliveries":[' + b",".join(hooks) + b"]}"


def _decode(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


def _now_ms() -> int:
    return int(time.time() * 1000)


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


@dataclass(frozen=True, slots=True)
class NewJob:
    """A job to create, with its Idempotency-Key: (client, key, body hash)."""

    job: Job
    idempotency: tuple[str, str, str] | None = None


@dataclass(frozen=True, slots=True)
class Created:
    """What creating a job did: stored it, found the idempotency key's job, or hit a cap."""

    record: bytes | None  # the public record JSON, when created
    earlier_id: str | None = None  # the job an Idempotency-Key already names
    earlier_hash: str | None = None  # the body hash that key was used with
    refused: tuple[str, int] | None = None  # (cap, current count): a cap refused the job


class _Calls:
    """Script arguments, laid out as ``shared.scripts`` documents them."""

    def __init__(self, ttl_s: int) -> None:
        self.ttl_s = ttl_s

    def create(
        self, new: Sequence[NewJob], caps: tuple[int, int], idempotency_ttl_s: int
    ) -> tuple[list[str], list[Any], list[bytes]]:
        keys: list[str] = []
        args: list[Any] = [
            _now_ms(),
            self.ttl_s,
            idempotency_ttl_s,
            caps[0],
            caps[1],
            STATUS_INDEX_PREFIX,
            CLIENT_INDEX_PREFIX,
            ALL_INDEX,
            DEADLINES,
        ]
        records = []
        for item in new:
            job = item.job
            spec, state = job.spec_json(), job.state_json()
            records.append(public_record(spec.encode(), state.encode(), []))
            message = enqueue_message(job)
            idem_key, idem_value = "", ""
            if item.idempotency is not None:
                client, key, body_hash = item.idempotency
                idem_key, idem_value = idempotency_key(client, key), f"{body_hash} {job.id}"
            deadline = job.deadline_ts()
            keys += [
                job_key(job.id),
                message.queue_list,
                idem_key,
                model_queued_index(job.model),
                bell_key(job.model),
            ]
            args += [
                job.id,
                spec,
                state,
                job.client or "",
                job.model,
                message.tag,
                message.body,
                "" if deadline is None else deadline,
                idem_value,
            ]
        return keys, args, records

    def transition(self, changes: Sequence[Change]) -> tuple[list[str], list[Any]]:
        keys: list[str] = []
        args: list[Any] = [
            _now_ms(),
            self.ttl_s,
            STATUS_INDEX_PREFIX,
            CLIENT_INDEX_PREFIX,
            MODEL_QUEUED_PREFIX,
            DEADLINES,
            DEAD_LETTER,
            DONE_CHANNEL,
            WEBHOOK_QUEUE,
            JOBS_TRANSPORT["unacked_key"],
            JOBS_TRANSPORT["unacked_index_key"],
            WORKER_JOBS_PREFIX,
            WORKER_CANCELS_PREFIX,
        ]
        for change in changes:
            job = change.job
            if job is None:
                keys += ["", "", "", ""]
                args += [""] * 14 + [change.release or "", ""]
                continue
            state = job.state_json()
            delivery = change.delivery(state)
            message = change.message
            deadline = ""
            if change.deadline_changed:
                due = job.deadline_ts()
                deadline = "-" if due is None else due
            keys += [
                job_key(job.id),
                "" if message is None else message.queue_list,
                "" if delivery is None else delivery_key(delivery.id),
                "" if message is None else bell_key(job.model),
            ]
            args += [
                job.id,
                job.status.value,
                "" if change.keep_state else state,
                " ".join(status.value for status in change.allowed),
                change.expected_run or "",
                change.new_run or "",
                change.owner or "",
                change.expected_tag or "",
                "" if message is None else message.tag,
                "" if message is None else message.body,
                deadline,
                "1" if change.dead else "",
                "" if delivery is None else delivery.model_dump_json(),
                ""
                if delivery is None
                else task_message(delivery.id, WEBHOOK_QUEUE, task=WEBHOOK_TASK_NAME),
                change.release or "",
                "" if change.held_after_ms is None else change.held_after_ms,
            ]
        return keys, args


def _outcomes(results: list[Any]) -> list[str | None]:
    """Per change: None when applied, else the job's current status ('' when it does not
    exist, 'held' when its message was taken meanwhile)."""
    return [None if result == 1 else (_decode(result) or "") for result in results]


def _created(results: list[Any], records: list[bytes]) -> list[Created]:
    out = []
    for result, record in zip(results, records, strict=True):
        if result == 0:
            out.append(Created(record))
        elif isinstance(result, list):
            out.append(Created(None, refused=(_decode(result[0]) or "", int(result[1]))))
        else:
            body_hash, _, job_id = (_decode(result) or "").partition(" ")
            out.append(Created(None, earlier_id=job_id, earlier_hash=body_hash))
    return out


class JobStore:
    """Synchronous store, used by the worker (redis-py clients are thread-safe)."""

    def __init__(self, client: redis.Redis, ttl_s: int) -> None:
        self._redis = client
        self._calls = _Calls(ttl_s)
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
        return _outcomes(self._transition(keys=keys, args=args))

    def apply(self, change: Change) -> bool:
        return self.apply_many([change])[0] is None

    def create(self, job: Job) -> Created:
        """Store a queued job with its message (tests and tools; the gateway is async)."""
        keys, args, records = self._calls.create([NewJob(job)], (0, 0), 1)
        return _created(self._create(keys=keys, args=args), records)[0]

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


class AsyncJobStore:
    """Asynchronous store, used by the gateway (its routes and its janitor)."""

    def __init__(self, client: aioredis.Redis, ttl_s: int) -> None:
        self._redis = client
        self._calls = _Calls(ttl_s)
        self._create = client.register_script(scripts.CREATE)
        self._transition = client.register_script(scripts.TRANSITION)
        self._request_cancel = client.register_script(scripts.REQUEST_CANCEL)
        self._delete = client.register_script(scripts.DELETE)
        self._drop_stale = client.register_script(scripts.DROP_STALE)
        self._messages = client.register_script(scripts.MESSAGES)
        self._statuses = client.register_script(scripts.STATUSES)
        self._records = client.register_script(scripts.RECORDS)

    @property
    def redis(self) -> aioredis.Redis:
        return self._redis

    async def create_many(
        self,
        new: Sequence[NewJob],
        caps: tuple[int, int] = (0, 0),
        idempotency_ttl_s: int = 0,
    ) -> list[Created]:
        """Store queued jobs with their task messages, each all or nothing, in one call.

        ``caps`` is (most queued jobs of a job's client, deepest queue of its model; 0: none):
        a job past one is not written and ``refused`` says which. A job whose Idempotency-Key
        already names a job is not written either; ``earlier_id`` names that job."""
        if not new:
            return []
        keys, args, records = self._calls.create(new, caps, idempotency_ttl_s)
        return _created(await self._create(keys=keys, args=args), records)

    async def get_raw(
        self, job_id: str, client: str | None = None
    ) -> tuple[bytes | None, bytes | None]:
        """The stored status and the public record JSON (``JobPublic``); Nones when unknown,
        or, with ``client``, when another client submitted it."""
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hmget(job_key(job_id), ["status", "spec", "state", "client"])
            pipe.lrange(hooks_key(job_id), 0, -1)
            (status, spec, state, owner), hooks = await pipe.execute()
        if spec is None or state is None or not _visible(owner, client):
            return None, None
        return status, public_record(spec, state, hooks)

    async def status(self, job_id: str, client: str | None = None) -> bytes | None:
        """The job's status (None: unknown, or with ``client``, another client's)."""
        status, owner = await self._redis.hmget(job_key(job_id), ["status", "client"])
        return status if status is not None and _visible(owner, client) else None

    async def statuses(
        self, job_ids: Sequence[str], client: str | None = None
    ) -> list[bytes | None]:
        """Each job's status (None: unknown, or with ``client``, another client's)."""
        if not job_ids:
            return []
        return list(await self._statuses(keys=[], args=[JOB_PREFIX, client or "", *job_ids]))

    async def get(self, job_id: str, client: str | None = None) -> Job | None:
        """The job (None: unknown, or with ``client``, another client's)."""
        spec, state, owner = await self._redis.hmget(job_key(job_id), ["spec", "state", "client"])
        if spec is None or state is None or not _visible(owner, client):
            return None
        return Job.from_parts(spec, state)

    async def get_many_raw(self, job_ids: Sequence[str]) -> list[bytes | None]:
        """Public record JSON of each job (None where unknown), in one call."""
        if not job_ids:
            return []
        rows = await self._records(keys=[], args=[JOB_PREFIX, HOOKS_PREFIX, *job_ids])
        return [None if row is None else public_record(row[0], row[1], row[2:]) for row in rows]

    async def get_many(self, job_ids: Sequence[str]) -> list[Job | None]:
        if not job_ids:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hmget(job_key(job_id), ["spec", "state"])
            rows = await pipe.execute()
        return [
            None if spec is None or state is None else Job.from_parts(spec, state)
            for spec, state in rows
        ]

    async def owners(self, job_ids: Sequence[str]) -> list[tuple[str | None, str | None]]:
        """(owner, run token) of each job."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hmget(job_key(job_id), ["owner", "run"])
            rows = await pipe.execute()
        return [(_decode(owner), _decode(run)) for owner, run in rows]

    async def message_tags(self, job_ids: Sequence[str]) -> list[str | None]:
        """The current task message tag of each job (None where unknown)."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hget(job_key(job_id), "msg")
            return [_decode(tag) for tag in await pipe.execute()]

    async def apply_many(self, changes: Sequence[Change]) -> list[str | None]:
        """Apply the changes in one script call; per change, None when applied, else the
        job's current status ('' when it does not exist, 'held': see ``lifecycle.reenqueue``)."""
        if not changes:
            return []
        keys, args = self._calls.transition(changes)
        return _outcomes(await self._transition(keys=keys, args=args))

    async def apply(self, change: Change) -> str | None:
        """Apply one change; None when applied, else the current status ('' if unknown)."""
        return (await self.apply_many([change]))[0]

    async def request_cancel(self, job_id: str) -> str | None:
        """Flag a running job for cancelling and tell its worker; its status (None: unknown)."""
        keys = [job_key(job_id), CANCEL_CHANNEL]
        return _decode(await self._request_cancel(keys=keys, args=[job_id, WORKER_CANCELS_PREFIX]))

    async def delete(self, job_id: str) -> str | None:
        """Delete a finished job; None when deleted, else its status ('' when unknown)."""
        done = await self._delete(
            keys=[job_key(job_id), ALL_INDEX, DEAD_LETTER],
            args=[job_id, STATUS_INDEX_PREFIX, CLIENT_INDEX_PREFIX],
        )
        if done == 1:
            return None
        return _decode(done) or ""

    async def drop_stale_messages(self, queue_lists: Sequence[str]) -> int:
        return int(await self._drop_stale(keys=list(queue_lists), args=[JOB_PREFIX]))

    async def messages(self, queue_lists: Sequence[str]) -> tuple[set[str], dict[str, float]]:
        """Where the job messages are, in one consistent view: the tags of every message in
        ``queue_lists``, and every message taken by a consumer and not acknowledged (tag ->
        when it was taken, epoch s)."""
        keys = [*queue_lists, JOBS_TRANSPORT["unacked_index_key"]]
        queued, taken = await self._messages(keys=keys, args=[])
        pairs = zip(taken[::2], taken[1::2], strict=True)
        return {_decode(t) or "" for t in queued}, {
            _decode(tag) or "": float(at) for tag, at in pairs
        }

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


def _visible(owner: bytes | None, client: str | None) -> bool:
    """Whether ``client`` may see a job ``owner`` submitted (None: any client may)."""
    return client is None or (owner is not None and owner.decode() == client)
