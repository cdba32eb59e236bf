"""``/v1/admin``: the operator's view of the queue: dead letters and purging queued jobs.

Admin keys only (ordinary keys get 403); everyone when STRUCTQ_INSECURE_NO_AUTH is on.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Response
from pydantic import BaseModel

from api.auth import require_admin
from api.deps import SettingsDep, StoreDep
from api.errors import invalid_field
from api.paging import Cursor, Limit, page_response
from shared import lifecycle
from shared.jobs import JobStatus
from shared.keys import DEAD_LETTER, queue_lists, status_index
from shared.redis_pools import decoded

__all__ = ["router"]

router = APIRouter(prefix="/v1/admin", tags=["admin"], dependencies=[Depends(require_admin)])

_BATCH = 500


@router.get("/dead-letters")
async def dead_letters(
    store: StoreDep,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> Response:
    """Jobs that failed ``max_attempts_exceeded`` (their worker died or their engine failed
    under them on every attempt), newest first; ``POST /v1/jobs/{id}/retry`` re-queues one."""
    return await page_response(store, DEAD_LETTER, limit, cursor)


class Purged(BaseModel):
    cancelled: int
    messages_removed: int


@router.post("/purge", response_model=Purged)
async def purge(
    store: StoreDep,
    settings: SettingsDep,
    model: Annotated[str | None, Query(description="Only this model's queue.")] = None,
) -> Purged:
    """Cancel every queued job (of ``model``, or of all served models) and drop their
    messages from the queue lists; how many were cancelled and removed."""
    if model is not None and model not in settings.models:
        raise invalid_field(("query", "model"), f"unknown model {model!r}")
    models = [model] if model is not None else settings.models
    cancelled = 0
    snapshot = decoded(await store.redis.zrange(status_index("queued"), 0, -1))
    for start in range(0, len(snapshot), _BATCH):
        for job in await store.get_many(snapshot[start : start + _BATCH]):
            if job is None or job.status is not JobStatus.QUEUED or job.model not in models:
                continue
            if await store.apply(lifecycle.cancel_queued(job, "purged by an operator")) is None:
                cancelled += 1
    removed = 0
    for name in models:
        removed += await store.drop_stale_messages(queue_lists(name))
    return Purged(cancelled=cancelled, messages_removed=removed)
