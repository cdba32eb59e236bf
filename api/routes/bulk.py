"""Many jobs in one request: ``POST /v1/jobs/batch`` submits up to 1,000 (each checked and
stored on its own), ``POST /v1/jobs/wait`` waits for any of up to 1,000 to finish. A client
with thousands of jobs pays a request per hundreds of them, not one (or two) per job."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Depends, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from api import service, waiting
from api.auth import CallerDep, authenticate
from api.deps import AdmissionDep, SettingsDep, StoreDep, WaitersDep
from api.errors import invalid_field
from api.service import IDEMPOTENCY_KEY_MAX
from api.waiting import MAX_WAIT_S
from shared.jobs import JobCreate

__all__ = ["MAX_BATCH_JOBS", "router"]

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], dependencies=[Depends(authenticate)])

# Most job bodies (or ids) one request may carry.
MAX_BATCH_JOBS = 1000


class JobBatch(BaseModel):
    """Job bodies as ``POST /v1/jobs`` takes them, each with an optional ``idempotency_key``
    (the ``Idempotency-Key`` header of a single request)."""

    model_config = ConfigDict(extra="forbid")

    jobs: list[dict[str, Any]] = Field(min_length=1, max_length=MAX_BATCH_JOBS)


@router.post(
    "/batch",
    responses={
        200: {
            "description": "Per job, in order: `status` (what `POST /v1/jobs` would have "
            "answered: 202 stored, 200 an earlier job of its idempotency key, 422, 409, 429, "
            "503) and its `id`, or the `error` (and `detail`) that request would have had. "
            "A refused job stores nothing; the others are stored all the same."
        }
    },
)
async def create_jobs(
    batch: JobBatch,
    store: StoreDep,
    settings: SettingsDep,
    caller: CallerDep,
    admission: AdmissionDep,
) -> Response:
    """Submit up to 1,000 jobs in one request: each is validated, checked and stored (or
    refused) exactly as a single ``POST /v1/jobs`` of it would be, in one Redis script call
    per 100 jobs."""
    items: list[tuple[JobCreate | Exception, str | None]] = []
    for body in batch.jobs:
        key = body.pop("idempotency_key", None)
        try:
            if key is not None and (not isinstance(key, str) or len(key) > IDEMPOTENCY_KEY_MAX):
                raise invalid_field(
                    ("body", "idempotency_key"), f"a string of at most {IDEMPOTENCY_KEY_MAX} chars"
                )
            items.append((JobCreate.model_validate(body), key))
        except ValidationError as exc:
            items.append((_in_body(exc), key))
        except Exception as exc:  # noqa: BLE001 - handed on as this item's refusal
            items.append((exc, key))
    outcomes = await service.submit_many(store, settings, items, caller, admission)
    data = []
    for index, outcome in enumerate(outcomes):
        row: dict[str, Any] = {"index": index, "status": outcome.status}
        if outcome.job_id is not None:
            row["id"] = outcome.job_id
        if outcome.error is not None:
            row["error"] = outcome.error
        if outcome.detail is not None:
            row["detail"] = outcome.detail
        data.append(row)
    stored = sum(outcome.status in (200, 202) for outcome in outcomes)
    body = {"data": data, "submitted": stored, "refused": len(outcomes) - stored}
    return Response(content=json.dumps(body), media_type="application/json")


def _in_body(exc: ValidationError) -> Exception:
    """A body's validation errors located as a single request's would be (under ``body``)."""
    from fastapi.exceptions import RequestValidationError

    return RequestValidationError(
        [{**error, "loc": ("body", *error["loc"])} for error in exc.errors()]
    )


class JobsWait(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ids: list[str] = Field(min_length=1, max_length=MAX_BATCH_JOBS)
    timeout_s: float = Field(
        30, ge=0, le=MAX_WAIT_S, description="Longest to wait for the first of them to finish."
    )
    linger_ms: int = Field(
        50,
        ge=0,
        le=1000,
        description="Once one has finished, how long to go on gathering others that finish "
        "then, before answering (fewer, fuller answers).",
    )


@router.post(
    "/wait",
    responses={
        200: {
            "description": "`data`: the records of those of `ids` that are finished (as `GET "
            "/v1/jobs/{id}` returns them); `pending`: the ids still queued or running; "
            "`unknown`: ids of no job of this key."
        }
    },
)
async def wait_for_jobs(
    request: JobsWait, store: StoreDep, waiters: WaitersDep, caller: CallerDep
) -> Response:
    """Wait for any of up to 1,000 jobs: answered as soon as at least one is finished (after
    ``linger_ms`` more to gather others finishing with it), or after ``timeout_s`` with none.
    Send the ``pending`` ids again for the rest."""
    finished, pending, unknown = await waiting.wait_any(
        store,
        waiters,
        list(dict.fromkeys(request.ids)),
        request.timeout_s,
        request.linger_ms / 1000,
        caller.scope,
    )
    body = (
        b'{"data":['
        + b",".join(finished)
        + b'],"pending":'
        + json.dumps(pending).encode()
        + b',"unknown":'
        + json.dumps(unknown).encode()
        + b"}"
    )
    return Response(content=body, media_type="application/json")
