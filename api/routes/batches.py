"""``/v1/batches``: a dataset as one unit of work, as OpenAI's Batch API shapes it (the openai
SDK's ``client.batches`` works against it), with structq's native ``/v1/jobs`` lines beside
OpenAI's two endpoints. The work itself is the batch driver's (``api.batch_driver``).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request

from api.auth import CallerDep, authenticate
from api.batches import Batches
from shared.batches import Batch, BatchCreate

__all__ = ["router"]

router = APIRouter(prefix="/v1/batches", tags=["batches"], dependencies=[Depends(authenticate)])


async def _batches(request: Request) -> Batches:
    batches: Batches = request.app.state.batches
    return batches


BatchesDep = Annotated[Batches, Depends(_batches)]


@router.post("")
async def create_batch(body: BatchCreate, batches: BatchesDep, caller: CallerDep) -> Batch:
    """Start a batch over an uploaded file (``purpose=batch``); it is ``validating`` at first,
    then ``in_progress``. Its lines run at ``priority`` (structq's field; 0, the lowest, by
    default), so interactive jobs overtake them."""
    return await batches.create(body, caller)


@router.get("")
async def list_batches(
    batches: BatchesDep,
    caller: CallerDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: str | None = None,
) -> dict[str, Any]:
    """The caller's batches, newest first."""
    found = await batches.list(caller.owner, limit + 1, after)
    data = [b.model_dump(mode="json") for b in found[:limit]]
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": len(found) > limit,
    }


@router.get("/{batch_id}")
async def get_batch(batch_id: str, batches: BatchesDep, caller: CallerDep) -> Batch:
    return await batches.get(batch_id, caller.scope)


@router.post("/{batch_id}/cancel")
async def cancel_batch(batch_id: str, batches: BatchesDep, caller: CallerDep) -> Batch:
    """``cancelling``: lines not yet run are cancelled, running ones aborted; what finished is
    kept in the output file. ``cancelled`` once the files are written."""
    return await batches.cancel(batch_id, caller.scope)
