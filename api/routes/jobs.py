"""``/v1/jobs``: submit, read, list, cancel, retry and delete jobs.

Each route parses its request, calls ``api.service`` (submitting, cancelling, retrying),
``api.waiting`` (long-polls), ``api.paging`` (listing) or ``api.streams`` (streaming), and
answers with the job records as stored.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query, Response
from fastapi.responses import StreamingResponse

from api import service, waiting
from api.auth import CallerDep, authenticate
from api.deps import GatewayDep, SettingsDep, StoreDep, StreamsDep, WaitersDep
from api.paging import Cursor, Limit, page_response
from api.streams import job_events
from api.waiting import MAX_WAIT_S
from shared.errors import Conflict, JobNotFound
from shared.jobs import JobCreate, JobPublic, JobStatus
from shared.keys import ALL_INDEX, client_index, status_index

__all__ = ["router"]

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], dependencies=[Depends(authenticate)])

_JSON = "application/json"


@router.post(
    "",
    status_code=202,
    response_model=JobPublic,
    responses={
        200: {"description": "An earlier request with this Idempotency-Key created the job."},
        409: {"description": "The Idempotency-Key's job was deleted."},
        422: {"description": "The job is invalid; nothing was enqueued."},
    },
)
async def create_job(
    body: JobCreate,
    gateway: GatewayDep,
    caller: CallerDep,
    idempotency_key: Annotated[
        str | None,
        Header(
            max_length=service.IDEMPOTENCY_KEY_MAX,
            description="Same key and same body: the same job, however often it is sent "
            "(kept for STRUCTQ_IDEMPOTENCY_TTL_S). Same key, another body: 422.",
        ),
    ] = None,
    prefer: Annotated[
        str | None,
        Header(
            max_length=200,
            description="`wait=N` (RFC 7240; N <= 60): answer once the job is finished, or "
            "after N seconds with it as it is then: submit and long-poll in one request.",
        ),
    ] = None,
) -> Response:
    """Validate a job, store it as ``queued`` and enqueue it for its model's worker pool. With
    ``Prefer: wait=N``, answer once it is finished (or after N seconds)."""
    wait = _preferred_wait(prefer)
    new = await service.prepare(
        gateway.settings, body, caller, idempotency_key, admission=gateway.admission
    )
    store, waiters = gateway.store, gateway.waiters
    # Watched from before it is stored, so that its completion cannot slip by unread.
    async with waiters.watch(new.job.id) as finished:
        submitted = await service.store_one(store, gateway.settings, new, caller, idempotency_key)
        record: bytes | None = submitted.record
        if wait and submitted.created:
            record = await waiting.wait_stored(
                store, finished, submitted.job_id, wait, caller.scope
            )
    if wait and not submitted.created:  # an earlier job of this Idempotency-Key
        record = await waiting.wait_one(store, waiters, submitted.job_id, wait, caller.scope)
    if record is None:
        raise JobNotFound(f"no job {submitted.job_id!r}")
    response = _created(submitted.job_id, record, 202 if submitted.created else 200)
    if wait:
        response.headers["Preference-Applied"] = f"wait={wait:g}"
    return response


def _preferred_wait(prefer: str | None) -> float:
    """The ``wait`` preference of a ``Prefer`` header (RFC 7240), within MAX_WAIT_S; 0: none."""
    for preference in (prefer or "").split(","):
        name, _, value = preference.strip().partition("=")
        if name.strip().lower() == "wait":
            try:
                return min(max(float(value.strip().strip('"')), 0.0), MAX_WAIT_S)
            except ValueError:
                return 0.0
    return 0.0


def _created(job_id: str, record: str | bytes, status_code: int) -> Response:
    return Response(
        content=record,
        status_code=status_code,
        media_type=_JSON,
        headers={"Location": f"/v1/jobs/{job_id}"},
    )


@router.get("", responses={422: {"description": "Bad status or cursor."}})
async def list_jobs(
    store: StoreDep,
    caller: CallerDep,
    status: Annotated[JobStatus | None, Query(description="Only jobs in this status.")] = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> Response:
    """Jobs, newest first (by creation; with `status`, by when they entered it), a page at a
    time: ``{"data": [...], "next_cursor": ...}``; `next_cursor` is null on the last page.
    ``status=failed`` includes the dead letters (see ``GET /v1/admin/dead-letters``)."""
    if caller.scope is None:
        index = ALL_INDEX if status is None else status_index(status.value)
    else:  # an ordinary key lists its own jobs only
        index = client_index(caller.scope, None if status is None else status.value)
    return await page_response(store, index, limit, cursor)


@router.get("/{job_id}", response_model=JobPublic, responses={404: {"description": "No such job."}})
async def get_job(
    job_id: str,
    gateway: GatewayDep,
    caller: CallerDep,
    wait: Annotated[
        float,
        Query(
            ge=0,
            le=MAX_WAIT_S,
            description="Long-poll: answer as soon as the job is finished, or after this many "
            "seconds with the job as it is then.",
        ),
    ] = 0,
) -> Response:
    """The job as stored: its status, timestamps, and its result or error once finished."""
    store = gateway.store
    if wait <= 0:
        return _job_response(job_id, (await store.get_raw(job_id, caller.scope))[1])
    return _job_response(
        job_id, await waiting.wait_one(store, gateway.waiters, job_id, wait, caller.scope)
    )


@router.get(
    "/{job_id}/stream",
    responses={
        200: {"content": {"text/event-stream": {}}, "description": "Server-sent events."},
        404: {"description": "No such job."},
    },
)
async def stream_job(
    job_id: str, store: StoreDep, streams: StreamsDep, caller: CallerDep
) -> StreamingResponse:
    """The job's output as server-sent events: ``event: delta`` with ``{"text": ...}`` as it is
    generated (for a job submitted with ``"stream": true``; any other job's text comes in one
    delta at its end), then ``event: done`` with the job's record. The stream ends there, or
    after MAX_WAIT_S with ``event: timeout`` (connect again to go on: the deltas so far are
    sent again first)."""
    _, raw = await store.get_raw(job_id, caller.scope)
    _job_response(job_id, raw)  # 404 when unknown, or another key's
    events = job_events(streams, store, job_id, MAX_WAIT_S, keepalive_s=15)
    return StreamingResponse(events, media_type="text/event-stream")


@router.post(
    "/{job_id}/cancel",
    response_model=JobPublic,
    responses={
        202: {"description": "Running: its engine request is being aborted."},
        404: {"description": "No such job."},
        409: {"description": "The job had already finished."},
    },
)
async def cancel_job(
    job_id: str, store: StoreDep, waiters: WaitersDep, settings: SettingsDep, caller: CallerDep
) -> Response:
    """Cancel a job. Queued: ``cancelled`` at once, never runs. Running: its request is
    aborted in the engine and it ends ``cancelled`` with its partial text (answered once it
    has, or 202 after STRUCTQ_CANCEL_WAIT_S). Already cancelled: the same answer again."""
    job = await store.get(job_id, caller.scope)
    if job is None:
        raise JobNotFound(f"no job {job_id!r}")
    status = await service.cancel(store, job, "cancelled by the client")
    if status == JobStatus.RUNNING:
        raw = await waiting.wait_one(store, waiters, job_id, settings.cancel_wait_s)
        job = None if raw is None else JobPublic.model_validate_json(raw)
        status = "" if job is None else job.status.value
        if status == JobStatus.RUNNING:
            return _job_response(job_id, raw, 202)
    if status == JobStatus.CANCELLED:
        return _job_response(job_id, (await store.get_raw(job_id))[1])
    if not status:
        raise JobNotFound(f"no job {job_id!r}")
    raise Conflict(f"job {job_id} has already finished: {status}", status=status)


@router.post(
    "/{job_id}/retry",
    status_code=202,
    response_model=JobPublic,
    responses={
        404: {"description": "No such job."},
        409: {"description": "Only failed, cancelled or expired jobs can be retried."},
    },
)
async def retry_job(
    job_id: str, store: StoreDep, settings: SettingsDep, caller: CallerDep
) -> Response:
    """Queue a failed, cancelled or expired job again (same id; `attempts` starts over,
    `retries` counts this). Also how a dead letter is re-queued."""
    job = await store.get(job_id, caller.scope)
    if job is None:
        raise JobNotFound(f"no job {job_id!r}")
    await service.retry(store, settings, caller, job)
    return _job_response(job_id, (await store.get_raw(job_id))[1], 202)


@router.delete(
    "/{job_id}",
    status_code=204,
    responses={
        404: {"description": "No such job."},
        409: {"description": "The job is queued or running: cancel it first."},
    },
)
async def delete_job(job_id: str, store: StoreDep, caller: CallerDep) -> Response:
    """Delete a finished job's record (and its index entries)."""
    if caller.scope is not None and (await store.get_raw(job_id, caller.scope))[1] is None:
        raise JobNotFound(f"no job {job_id!r}")
    current = await store.delete(job_id)
    if current is None:
        return Response(status_code=204)
    if not current:
        raise JobNotFound(f"no job {job_id!r}")
    raise Conflict(f"job {job_id} is {current}; cancel it before deleting it", status=current)


def _job_response(job_id: str, raw: bytes | None, status_code: int = 200) -> Response:
    if raw is None:
        raise JobNotFound(f"no job {job_id!r} (unknown, or past its retention time)")
    return Response(content=raw, media_type=_JSON, status_code=status_code)
