"""``/v1/jobs``: submit a job, read it back."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Response

from api.deps import SettingsDep, StoreDep, WaitersDep
from api.errors import invalid_field
from shared.celery_message import task_message
from shared.errors import JobNotFound
from shared.jobs import Job, JobCreate, JobPublic
from shared.keys import queue_name
from shared.store import is_terminal

__all__ = ["router"]

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

_JSON = "application/json"
# Longest long-poll a client may ask for (`GET /v1/jobs/{id}?wait=`).
MAX_WAIT_S = 60


@router.post(
    "",
    status_code=202,
    response_model=JobPublic,
    responses={422: {"description": "The job is invalid; nothing was enqueued."}},
)
async def create_job(body: JobCreate, store: StoreDep, settings: SettingsDep) -> Response:
    """Validate a job, store it as ``queued`` and enqueue it for its model's worker pool."""
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
    # Fields are handed over as validated objects: pydantic does not check them a second time.
    fields = {name: getattr(body, name) for name in JobCreate.model_fields}
    job = Job(**{**fields, "model": model}, id=str(uuid.uuid4()))
    queue = queue_name(model)
    record = await store.create(job, queue, task_message(job.id, queue))
    return Response(
        content=record,
        status_code=202,
        media_type=_JSON,
        headers={"Location": f"/v1/jobs/{job.id}"},
    )


@router.get("/{job_id}", response_model=JobPublic, responses={404: {"description": "No such job."}})
async def get_job(
    job_id: str,
    store: StoreDep,
    waiters: WaitersDep,
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
    if wait <= 0:
        return _job_response(job_id, (await store.get_raw(job_id))[1])
    async with waiters.watch(job_id) as finished:
        status, raw = await store.get_raw(job_id)
        if raw is not None and not is_terminal(status):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(finished.wait(), timeout=wait)
            status, raw = await store.get_raw(job_id)
    return _job_response(job_id, raw)


def _job_response(job_id: str, raw: bytes | None) -> Response:
    if raw is None:
        raise JobNotFound(f"no job {job_id!r} (unknown, or past its retention time)")
    return Response(content=raw, media_type=_JSON)
