"""The gateway's job store (its routes and its janitor): job records in Redis through the
scripts of ``shared.scripts``, with the same argument layouts as the worker's store
(``shared.script_calls``), plus the reads only the gateway makes: public records, listings,
and the janitor's views of the queues.

Clients are made without ``decode_responses``: replies are bytes. redis-py's annotations allow
str as well, hence the few casts to what these replies are.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import redis.asyncio as aioredis

from shared import scripts
from shared.jobs import Job
from shared.keys import (
    ALL_INDEX,
    CANCEL_CHANNEL,
    CLIENT_INDEX_PREFIX,
    DEAD_LETTER,
    HOOKS_PREFIX,
    JOB_PREFIX,
    JOBS_TRANSPORT,
    STATUS_INDEX_PREFIX,
    WORKER_CANCELS_PREFIX,
    hooks_key,
    job_key,
)
from shared.lifecycle import Change
from shared.script_calls import (
    Created,
    NewJob,
    ScriptCalls,
    created,
    decode,
    outcomes,
    public_record,
)

__all__ = ["AsyncJobStore"]


class AsyncJobStore:
    """Asynchronous store, used by the gateway (its routes and its janitor)."""

    def __init__(self, client: aioredis.Redis, ttl_s: int) -> None:
        self._redis = client
        self._calls = ScriptCalls(ttl_s)
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
        return created(await self._create(keys=keys, args=args), records)

    async def get_raw(
        self, job_id: str, client: str | None = None
    ) -> tuple[bytes | None, bytes | None]:
        """The stored status and the public record JSON (``JobPublic``); Nones when unknown,
        or, with ``client``, when another client submitted it."""
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hmget(job_key(job_id), ["status", "spec", "state", "client"])
            pipe.lrange(hooks_key(job_id), 0, -1)
            rows: list[Any] = await pipe.execute()
        (status, spec, state, owner), hooks = cast(tuple[list[bytes | None], list[bytes]], rows)
        if spec is None or state is None or not _visible(owner, client):
            return None, None
        return status, public_record(spec, state, hooks)

    async def status(self, job_id: str, client: str | None = None) -> bytes | None:
        """The job's status (None: unknown, or with ``client``, another client's)."""
        status, owner = cast(
            list[bytes | None], await self._redis.hmget(job_key(job_id), ["status", "client"])
        )
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
        return [(decode(owner), decode(run)) for owner, run in rows]

    async def message_tags(self, job_ids: Sequence[str]) -> list[str | None]:
        """The current task message tag of each job (None where unknown)."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hget(job_key(job_id), "msg")
            return [decode(tag) for tag in await pipe.execute()]

    async def apply_many(self, changes: Sequence[Change]) -> list[str | None]:
        """Apply the changes in one script call; per change, None when applied, else the
        job's current status ('' when it does not exist, 'held': see ``lifecycle.reenqueue``)."""
        if not changes:
            return []
        keys, args = self._calls.transition(changes)
        return outcomes(await self._transition(keys=keys, args=args))

    async def apply(self, change: Change) -> str | None:
        """Apply one change; None when applied, else the current status ('' if unknown)."""
        return (await self.apply_many([change]))[0]

    async def request_cancel(self, job_id: str) -> str | None:
        """Flag a running job for cancelling and tell its worker; its status (None: unknown)."""
        keys = [job_key(job_id), CANCEL_CHANNEL]
        return decode(await self._request_cancel(keys=keys, args=[job_id, WORKER_CANCELS_PREFIX]))

    async def delete(self, job_id: str) -> str | None:
        """Delete a finished job; None when deleted, else its status ('' when unknown)."""
        done = await self._delete(
            keys=[job_key(job_id), ALL_INDEX, DEAD_LETTER],
            args=[job_id, STATUS_INDEX_PREFIX, CLIENT_INDEX_PREFIX],
        )
        if done == 1:
            return None
        return decode(done) or ""

    async def drop_stale_messages(self, queue_lists: Sequence[str]) -> int:
        return int(await self._drop_stale(keys=list(queue_lists), args=[JOB_PREFIX]))

    async def messages(self, queue_lists: Sequence[str]) -> tuple[set[str], dict[str, float]]:
        """Where the job messages are, in one consistent view: the tags of every message in
        ``queue_lists``, and every message taken by a consumer and not acknowledged (tag ->
        when it was taken, epoch s)."""
        keys = [*queue_lists, JOBS_TRANSPORT["unacked_index_key"]]
        queued, taken = await self._messages(keys=keys, args=[])
        pairs = zip(taken[::2], taken[1::2], strict=True)
        return {decode(t) or "" for t in queued}, {
            decode(tag) or "": float(at) for tag, at in pairs
        }

    async def page(
        self, index: str, limit: int, before: tuple[int, str] | None
    ) -> list[tuple[str, int]]:
        """Up to ``limit`` (job id, score) of ``index``, newest first, strictly before the
        cursor ``(score, id)`` when one is given."""
        top: str | int = "+inf" if before is None else before[0]
        rows = cast(
            list[tuple[bytes, float]],
            await self._redis.zrevrangebyscore(
                index, top, "-inf", start=0, num=limit + 64, withscores=True
            ),
        )
        out: list[tuple[str, int]] = []
        for member, score in rows:
            job_id, score = decode(member) or "", int(score)
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


def _visible(owner: bytes | str | None, client: str | None) -> bool:
    """Whether ``client`` may see a job ``owner`` submitted (None: any client may)."""
    return client is None or (owner is not None and decode(owner) == client)
