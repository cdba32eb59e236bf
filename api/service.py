"""What the gateway does with jobs, whatever the route: submit one, cancel one, wait for many.

``/v1/jobs`` and the OpenAI-compatible routes both go through here, so a job submitted either
way is checked, stored and enqueued the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta

from api.errors import invalid_field
from api.settings import ApiSettings
from api.waiters import CompletionWaiters
from shared import lifecycle
from shared.errors import Conflict
from shared.jobs import Job, JobCreate, JobPublic, JobStatus, utcnow
from shared.store import AsyncJobStore, is_terminal
from shared.webhooks import UnsafeUrl, resolve_checked

__all__ = ["Submitted", "cancel", "submit", "wait_all"]


@dataclass(frozen=True, slots=True)
class Submitted:
    job_id: str
    record: bytes  # the public record JSON
    created: bool  # False: an earlier request with the same Idempotency-Key made it


async def submit(
    store: AsyncJobStore,
    settings: ApiSettings,
    body: JobCreate,
    client: str,
    idempotency_key: str | None = None,
) -> Submitted:
    """Check a job against this deployment, store it ``queued`` and enqueue it, atomically.
    Every refusal is a 422 (or 409 for a deleted idempotent job) before anything is stored."""
    if body.sampling.max_tokens > settings.max_tokens_limit:
        raise invalid_field(
            ("body", "sampling", "max_tokens"),
            f"max_tokens {body.sampling.max_tokens} is above this deployment's limit "
            f"of {settings.max_tokens_limit}",
        )
    model = body.model or settings.model
    if model not in settings.models:
        raise invalid_field(
            ("body", "model"), f"unknown model {model!r}; served: {', '.join(settings.models)}"
        )
    if body.webhook is not None:
        try:
            await asyncio.to_thread(
                resolve_checked, body.webhook.url, settings.webhook_allowed_networks
            )
        except UnsafeUrl as exc:
            raise invalid_field(("body", "webhook", "url"), str(exc)) from None
    now = utcnow()
    deadline = body.deadline
    if body.timeout_s is not None:
        deadline = now + timedelta(seconds=body.timeout_s)
    elif deadline is not None and deadline <= now:
        raise invalid_field(("body", "deadline"), f"deadline {deadline} has already passed")
    # Fields are handed over as validated objects: pydantic does not check them a second time.
    fields = {name: getattr(body, name) for name in JobCreate.model_fields}
    job = Job(
        **{**fields, "model": model, "deadline": deadline},
        id=str(uuid.uuid4()),
        created_at=now,
    )
    where, message = lifecycle.enqueue_message(job)
    idempotency = None
    if idempotency_key is not None:
        if not idempotency_key:
            raise invalid_field(("header", "idempotency-key"), "must not be empty")
        body_hash = hashlib.sha256(body.model_dump_json().encode()).hexdigest()
        idempotency = (client, idempotency_key, body_hash, settings.idempotency_ttl_s)
    created = await store.create(job, where, message, idempotency)
    if created.record is not None:
        return Submitted(job.id, created.record, created=True)
    assert idempotency is not None and created.earlier_id is not None
    if created.earlier_hash != idempotency[2]:
        raise invalid_field(
            ("header", "idempotency-key"),
            f"Idempotency-Key {idempotency_key!r} was used with a different request body "
            f"(job {created.earlier_id}); use a new key for a new job",
        )
    _, raw = await store.get_raw(created.earlier_id)
    if raw is None:
        raise Conflict(
            f"Idempotency-Key {idempotency_key!r} created job {created.earlier_id}, which has "
            "since been deleted; use a new key"
        )
    return Submitted(created.earlier_id, raw, created=False)


async def cancel(store: AsyncJobStore, job: Job, reason: str) -> str:
    """Ask for ``job`` to stop: a queued job is ``cancelled`` at once, a running one is flagged
    and its worker told. The job's status after the request ('' if it no longer exists)."""
    if job.status is JobStatus.QUEUED:
        current = await store.apply(lifecycle.cancel_queued(job, reason))
        if current is None:
            return JobStatus.CANCELLED.value
        status = current
    else:
        status = job.status.value
    if status == JobStatus.RUNNING:
        return await store.request_cancel(job.id) or ""
    return status


async def wait_all(
    store: AsyncJobStore, waiters: CompletionWaiters, job_ids: list[str], timeout_s: float
) -> list[JobPublic | None]:
    """The jobs once every one is terminal, or as they are after ``timeout_s``. None: a job
    that no longer exists."""
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
            if not pending or remaining <= 0:
                return jobs
            waits = [asyncio.create_task(event.wait()) for event in pending]
            try:
                await asyncio.wait(waits, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in waits:
                    task.cancel()
