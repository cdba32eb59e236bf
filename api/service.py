"""What the gateway does with jobs, whatever the route: submit one or many, cancel or retry one.
(Checks before storing: ``api.admission``; waiting for jobs: ``api.waiting``.)

``/v1/jobs`` and the OpenAI-compatible routes both go through here, so a job submitted either
way is checked, stored and enqueued the same way.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from api import metrics
from api.admission import Admission, check_caps, refusal
from api.auth import Caller
from api.errors import invalid_field, validation_detail
from api.models import ModelDirectory
from api.settings import ApiSettings
from shared import lifecycle, logs
from shared.async_store import AsyncJobStore
from shared.errors import Conflict, ErrorCode, JobNotFound, StructqError, UnsafeUrl
from shared.jobs import Job, JobCreate, JobStatus, utcnow
from shared.script_calls import Created, NewJob
from shared.webhooks import resolve_checked

__all__ = [
    "IDEMPOTENCY_KEY_MAX",
    "ItemOutcome",
    "Submitted",
    "cancel",
    "item_error",
    "prepare",
    "retry",
    "submit",
    "submit_many",
    "store_one",
]


# Longest Idempotency-Key taken (the header of ``POST /v1/jobs``, a batch item's field).
IDEMPOTENCY_KEY_MAX = 255


@dataclass(frozen=True, slots=True)
class Submitted:
    job_id: str
    record: bytes  # the public record JSON
    created: bool  # False: an earlier request with the same Idempotency-Key made it


async def prepare(
    settings: ApiSettings,
    body: JobCreate,
    caller: Caller,
    idempotency_key: str | None = None,
    admission: Admission | None = None,
    fit_max_tokens: bool = False,
) -> NewJob:
    """Check a job against this deployment and build its record: every refusal is a 4xx
    before anything is stored. ``fit_max_tokens``: lower max_tokens to what the model's
    context leaves after the prompt (the OpenAI routes' default when a request gives none, as
    vLLM's server does)."""
    if body.sampling.max_tokens > settings.max_tokens_limit:
        raise invalid_field(
            ("body", "sampling", "max_tokens"),
            f"max_tokens {body.sampling.max_tokens} is above this deployment's limit "
            f"of {settings.max_tokens_limit}",
        )
    models = admission.models if admission is not None else None
    route = await (models or ModelDirectory(settings, None)).route(body.model)
    if admission is not None:
        body = await admission.check(body, route.model, settings, fit_max_tokens)
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
    job = Job.model_construct(
        **{
            **_JOB_DEFAULTS,
            **fields,
            "model": route.model,
            "adapter": route.adapter,
            "deadline": deadline,
            "id": str(uuid.uuid4()),
            "created_at": now,
            "client": caller.owner,
            "request_id": logs.request_id(),
        }
    )
    idempotency = None
    if idempotency_key is not None:
        if not idempotency_key:
            raise invalid_field(("header", "idempotency-key"), "must not be empty")
        body_hash = hashlib.sha256(body.model_dump_json().encode()).hexdigest()
        idempotency = (caller.name, idempotency_key, body_hash)
    return NewJob(job, idempotency)


# The stored job's own fields, at their values for a new job (``Job.model_construct`` fills
# in no defaults of its own for fields it is not given).
_JOB_DEFAULTS = {
    name: field.get_default(call_default_factory=True)
    for name, field in Job.model_fields.items()
    if name not in JobCreate.model_fields and not field.is_required()
}


async def submit(
    store: AsyncJobStore,
    settings: ApiSettings,
    body: JobCreate,
    caller: Caller,
    idempotency_key: str | None = None,
    admission: Admission | None = None,
    fit_max_tokens: bool = False,
) -> Submitted:
    """Check a job, store it ``queued`` and enqueue it, atomically. Every refusal is a 4xx (or
    503 for a full queue) before anything is stored."""
    new = await prepare(settings, body, caller, idempotency_key, admission, fit_max_tokens)
    return await store_one(store, settings, new, caller, idempotency_key)


async def store_one(
    store: AsyncJobStore,
    settings: ApiSettings,
    new: NewJob,
    caller: Caller,
    idempotency_key: str | None = None,
) -> Submitted:
    """Store a prepared job (see ``prepare``) with its message, all or nothing."""
    caps, ttl = _caps(settings, caller), settings.idempotency_ttl_s
    created = (await store.create_many([new], caps, ttl))[0]
    metrics.submitted([new], [created])
    return await _outcome(store, new, created, caller, idempotency_key)


def _caps(settings: ApiSettings, caller: Caller) -> tuple[int, int]:
    return (settings.max_queued_per_key if caller.owner else 0, settings.max_queue_depth)


async def _outcome(
    store: AsyncJobStore, new: NewJob, created: Created, caller: Caller, key: str | None
) -> Submitted:
    """What creating ``new`` came to: the job stored, the Idempotency-Key's earlier job, or
    the refusal (raised)."""
    job = new.job
    if created.refused is not None:
        limit, count = created.refused
        raise refusal(limit, count, job.model, caller)
    if created.record is not None:
        return Submitted(job.id, created.record, created=True)
    assert new.idempotency is not None and created.earlier_id is not None
    if created.earlier_hash != new.idempotency[2]:
        raise invalid_field(
            ("header", "idempotency-key"),
            f"Idempotency-Key {key!r} was used with a different request body "
            f"(job {created.earlier_id}); use a new key for a new job",
        )
    _, raw = await store.get_raw(created.earlier_id, caller.scope)
    if raw is None:
        raise Conflict(
            f"Idempotency-Key {key!r} created job {created.earlier_id}, which has "
            "since been deleted; use a new key"
        )
    return Submitted(created.earlier_id, raw, created=False)


@dataclass(frozen=True, slots=True)
class ItemOutcome:
    """What ``POST /v1/jobs/batch`` did with one body: the HTTP status a single ``POST
    /v1/jobs`` of it would have had, and its job id or its error body."""

    status: int
    job_id: str | None = None
    error: dict[str, Any] | None = None
    detail: list[dict[str, Any]] | None = None  # a validation failure's field problems


# Jobs stored per script call: a call holds Redis for its whole length.
_CHUNK = 100


async def submit_many(
    store: AsyncJobStore,
    settings: ApiSettings,
    items: list[tuple[JobCreate | Exception, str | None]],
    caller: Caller,
    admission: Admission | None = None,
) -> list[ItemOutcome]:
    """Many jobs, each checked and stored (or refused) on its own, as ``submit`` would; a
    failed item never stops the others. ``items``: each body (or why it is not one) and its
    Idempotency-Key. Stored in chunks of one script call each."""
    outcomes: list[ItemOutcome | None] = [None] * len(items)
    prepared: list[tuple[int, NewJob, str | None]] = []
    for index, (body, key) in enumerate(items):
        if isinstance(body, Exception):
            outcomes[index] = item_error(body)
            continue
        try:
            prepared.append((index, await prepare(settings, body, caller, key, admission), key))
        except (StructqError, RequestValidationError) as exc:
            outcomes[index] = item_error(exc)
    caps, ttl = _caps(settings, caller), settings.idempotency_ttl_s
    for start in range(0, len(prepared), _CHUNK):
        chunk = prepared[start : start + _CHUNK]
        jobs = [new for _, new, _ in chunk]
        created = await store.create_many(jobs, caps, ttl)
        metrics.submitted(jobs, created)
        for (index, new, key), done in zip(chunk, created, strict=True):
            if done.record is not None:
                outcomes[index] = ItemOutcome(202, new.job.id)
                continue
            try:
                submitted = await _outcome(store, new, done, caller, key)
            except (StructqError, RequestValidationError) as exc:
                outcomes[index] = item_error(exc)
            else:
                outcomes[index] = ItemOutcome(200, submitted.job_id)
    return [outcome for outcome in outcomes if outcome is not None]


def item_error(exc: Exception) -> ItemOutcome:
    """One batch item's refusal, with the body a single request would have got."""
    if isinstance(exc, RequestValidationError | ValidationError):
        summary, detail = validation_detail(exc.errors())
        invalid = {"code": ErrorCode.INVALID_REQUEST.value, "message": summary}
        return ItemOutcome(422, error=invalid, detail=detail)
    if isinstance(exc, StructqError):
        error: dict[str, Any] = {"code": exc.code.value, "message": exc.message, **exc.extra}
        return ItemOutcome(exc.http_status, error=error)
    raise exc


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


async def retry(store: AsyncJobStore, settings: ApiSettings, caller: Caller, job: Job) -> None:
    """Queue a failed, cancelled or expired ``job`` again (same id), checked against
    ``caller``'s caps as a new job would be; a 409 for any other job, or one whose absolute
    deadline has passed."""
    if not job.status.retryable:
        raise Conflict(
            f"job {job.id} is {job.status.value}; only failed, cancelled or expired jobs can "
            "be retried",
            status=job.status.value,
        )
    if job.timeout_s is None and job.deadline is not None and job.deadline <= utcnow():
        raise Conflict(
            f"job {job.id}'s deadline ({job.deadline}) has passed; submit it again with a new one",
            status=job.status.value,
        )
    await check_caps(store, settings, caller, job.model)
    current = await store.apply(lifecycle.retry(job))
    if current is not None:
        if not current:
            raise JobNotFound(f"no job {job.id!r}")
        raise Conflict(f"job {job.id} changed meanwhile: now {current}", status=current)
