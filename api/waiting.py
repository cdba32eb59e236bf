"""Waiting for jobs to finish, for every route that waits: a job's long-poll, ``/v1/jobs/wait``,
the OpenAI-compatible routes. Completion notices (``api.waiters``) wake a waiter the moment a
job it watches is finished; records are read once they are.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

from api.waiters import CompletionWaiters
from shared.async_store import AsyncJobStore
from shared.jobs import JobPublic, is_terminal

__all__ = ["wait_all", "wait_any", "wait_one"]


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
    unknown ones (or, with ``scope``, another client's)."""
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


# Longest a waiting request relies on completion notices alone before reading the jobs again
# (a notice can be missed while the gateway re-subscribes after losing Redis).
_REREAD_S = 5.0


async def wait_all(
    store: AsyncJobStore,
    waiters: CompletionWaiters,
    job_ids: list[str],
    timeout_s: float,
    stop_early: Callable[[list[JobPublic | None]], bool] | None = None,
) -> list[JobPublic | None]:
    """The jobs once every one is terminal (or ``stop_early`` says so), or as they are after
    ``timeout_s``. None: a job that no longer exists."""
    deadline = time.monotonic() + timeout_s
    async with contextlib.AsyncExitStack() as stack:
        # Watch before reading: a job that finishes between the read and the wait still wakes us.
        events = [await stack.enter_async_context(waiters.watch(job_id)) for job_id in job_ids]
        while True:
            for event in events:  # cleared before the read: a later completion sets it again
                event.clear()
            raws = await store.get_many_raw(job_ids)
            jobs = [None if raw is None else JobPublic.model_validate_json(raw) for raw in raws]
            pending = [
                event
                for job, event in zip(jobs, events, strict=True)
                if job is not None and not is_terminal(job.status.value)
            ]
            remaining = deadline - time.monotonic()
            if not pending or remaining <= 0 or (stop_early is not None and stop_early(jobs)):
                return jobs
            waits = [asyncio.create_task(event.wait()) for event in pending]
            try:
                await asyncio.wait(
                    waits, timeout=min(remaining, _REREAD_S), return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                for task in waits:
                    task.cancel()


async def wait_one(
    store: AsyncJobStore,
    waiters: CompletionWaiters,
    job_id: str,
    timeout_s: float,
    scope: str | None = None,
) -> bytes | None:
    """The job's record once it is terminal, or as it is after ``timeout_s`` (None: unknown,
    or not ``scope``'s job)."""
    async with waiters.watch(job_id) as finished:
        status = await store.status(job_id, scope)  # the record itself is read once, at the end
        if status is None:
            return None
        if not is_terminal(status):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(finished.wait(), timeout=timeout_s)
    return (await store.get_raw(job_id, scope))[1]
