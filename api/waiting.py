"""Waiting for jobs to finish, for every route that waits: a job's long-poll (``GET
/v1/jobs/{id}?wait=``, ``Prefer: wait``), a cancel waiting for its running job, ``POST
/v1/jobs/wait``, the OpenAI-compatible routes.

A waiter watches its jobs (``api.waiters``) *before* it reads them, so a job that finishes
between the read and the wait still wakes it. It reads them again each time one is announced
finished, and at least every _REREAD_S (a notice can be missed while the gateway re-subscribes
after losing Redis); it answers once they are as it wants them, or at its timeout with them as
they are then.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from api.waiters import CompletionWaiters, Finished
from shared.async_store import AsyncJobStore
from shared.jobs import JobPublic, is_terminal

__all__ = ["MAX_WAIT_S", "wait_all", "wait_any", "wait_one", "wait_stored"]

# Longest any request may wait: a long-poll, `Prefer: wait`, `POST /v1/jobs/wait`.
MAX_WAIT_S = 60

# Longest a waiter relies on completion notices alone before reading its jobs again.
_REREAD_S = 5.0

_T = TypeVar("_T")


async def wait_one(
    store: AsyncJobStore,
    waiters: CompletionWaiters,
    job_id: str,
    timeout_s: float,
    scope: str | None = None,
) -> bytes | None:
    """The job's public record once it is finished, or as it is after ``timeout_s`` (None:
    unknown, or not ``scope``'s job)."""
    async with waiters.watch(job_id) as finished:
        return await _record_once_finished(store, finished, job_id, timeout_s, scope)


async def wait_stored(
    store: AsyncJobStore, finished: Finished, job_id: str, timeout_s: float, scope: str | None
) -> bytes | None:
    """``wait_one`` for a job just stored, and watched (``finished``) since before it was:
    it is known to be unfinished, so it is not read before it is announced finished (or
    _REREAD_S has passed)."""
    return await _record_once_finished(store, finished, job_id, timeout_s, scope, read_first=False)


async def _record_once_finished(
    store: AsyncJobStore,
    finished: Finished,
    job_id: str,
    timeout_s: float,
    scope: str | None,
    read_first: bool = True,
) -> bytes | None:
    async def read() -> tuple[bytes | None, bytes | None]:
        return await store.get_raw(job_id, scope)

    def settled(status_and_record: tuple[bytes | None, bytes | None]) -> bool:
        status, record = status_and_record
        return record is None or is_terminal(status)

    _, record = await _read_until(finished, timeout_s, read, settled, read_first=read_first)
    return record


async def wait_all(
    store: AsyncJobStore,
    waiters: CompletionWaiters,
    job_ids: list[str],
    timeout_s: float,
    stop_early: Callable[[list[JobPublic | None]], bool] | None = None,
) -> list[JobPublic | None]:
    """The jobs once every one is finished (or ``stop_early`` says so), or as they are after
    ``timeout_s``. None: a job that no longer exists."""

    async def read() -> list[JobPublic | None]:
        raws = await store.get_many_raw(job_ids)
        return [None if raw is None else JobPublic.model_validate_json(raw) for raw in raws]

    def settled(jobs: list[JobPublic | None]) -> bool:
        if all(job is None or job.status.terminal for job in jobs):
            return True
        return stop_early is not None and stop_early(jobs)

    async with waiters.watch_any(job_ids) as finished:
        return await _read_until(finished, timeout_s, read, settled)


async def _read_until(
    finished: asyncio.Event,
    timeout_s: float,
    read: Callable[[], Awaitable[_T]],
    settled: Callable[[_T], bool],
    read_first: bool = True,
) -> _T:
    """What ``read()`` returns once ``settled`` says so of it, or at ``timeout_s``. It is read
    first (unless ``read_first`` is False: the caller knows it is unsettled), then again each
    time ``finished`` (the watch of the jobs read) is set, and at least every _REREAD_S."""
    deadline = time.monotonic() + timeout_s
    if not read_first:
        await _until_set(finished, timeout_s)
    while True:
        finished.clear()  # before the read: a job finishing after it sets it again
        value = await read()
        remaining = deadline - time.monotonic()
        if settled(value) or remaining <= 0:
            return value
        await _until_set(finished, remaining)


async def _until_set(finished: asyncio.Event, timeout_s: float) -> None:
    """Until ``finished`` is set, for at most ``timeout_s`` (and _REREAD_S)."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(finished.wait(), timeout=min(timeout_s, _REREAD_S))


async def wait_any(
    store: AsyncJobStore,
    waiters: CompletionWaiters,
    job_ids: list[str],
    timeout_s: float,
    linger_s: float,
    scope: str | None,
) -> tuple[list[bytes], list[str], list[str]]:
    """The public records of those of ``job_ids`` that are finished, once at least one is (and
    ``linger_s`` more has passed), or after ``timeout_s``; with the ids still pending and the
    unknown ones (or, with ``scope``, another client's). Only statuses are read while waiting,
    and only the jobs announced finished are read again."""
    async with waiters.watch_any(job_ids) as finished:
        statuses = dict(zip(job_ids, await store.statuses(job_ids, scope), strict=True))
        waiting = [i for i, s in statuses.items() if s is not None]  # unknown ids never finish
        if timeout_s > 0 and waiting and not any(is_terminal(statuses[i]) for i in waiting):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(finished.wait(), timeout=timeout_s)
                if linger_s > 0:
                    await asyncio.sleep(linger_s)
            # Only those announced finished are read again (all, if announcements were lost).
            again = waiting if finished.everything else [i for i in waiting if i in finished.ids]
            statuses.update(zip(again, await store.statuses(again, scope), strict=True))
    done = [i for i in job_ids if is_terminal(statuses[i])]
    pending = [i for i in job_ids if statuses[i] is not None and not is_terminal(statuses[i])]
    unknown = [i for i in job_ids if statuses[i] is None]
    records = [raw for raw in await store.get_many_raw(done) if raw is not None]
    return records, pending, unknown
