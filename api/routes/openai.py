"""OpenAI-compatible endpoints over the queue: ``/v1/models``, ``/v1/chat/completions``,
``/v1/completions``, for the ``openai`` SDK and ``outlines.from_vllm`` unchanged.

Each request becomes jobs (one per prompt and choice) that go through the queue and the worker
pool like any other; the gateway waits for them (at most STRUCTQ_OPENAI_WAIT_S, which the jobs
also carry as their ``timeout_s``, so a job nobody waits for any more never runs on) and
answers in OpenAI's shape, or relays their tokens as server-sent events.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from api import service
from api.deps import ClientDep, SettingsDep, StoreDep, WaitersDep
from api.errors import openai_error, openai_error_response
from api.openai_compat import (
    ChatRequest,
    ChunkKind,
    CompletionRequest,
    Outcome,
    chat_jobs,
    chat_response,
    chunk,
    completion_jobs,
    completion_response,
    outcome,
    usage,
)
from api.settings import ApiSettings
from api.streams import Delta, relay
from api.waiters import CompletionWaiters
from shared.errors import StructqError
from shared.jobs import JobCreate, JobPublic
from shared.keys import WORKER_PREFIX
from shared.store import AsyncJobStore

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["openai"])

# How much longer than the jobs' own timeout the gateway waits for their final status.
_GRACE_S = 5.0
# How often a waiting request checks whether its client is still there.
_DISCONNECT_CHECK_S = 1.0


class ModelNotFound(StructqError):
    code = "model_not_found"
    http_status = 404


async def _served(request: Request) -> dict[str, dict[str, Any]]:
    """The models running workers announce (their heartbeat keys), with a worker count."""
    redis = request.app.state.redis
    keys = [key async for key in redis.scan_iter(match=f"{WORKER_PREFIX}*", count=500)]
    models: dict[str, dict[str, Any]] = {}
    for raw in await redis.mget(keys) if keys else []:
        if raw is None:
            continue  # expired between the scan and the read
        worker = json.loads(raw)
        ready = int(datetime.fromisoformat(worker["ready_at"]).timestamp())
        card = models.setdefault(
            worker["model"],
            {
                "id": worker["model"],
                "object": "model",
                "created": ready,
                "owned_by": "structq",
                "root": worker["model"],
                "max_model_len": worker.get("max_model_len"),
                "workers": 0,
            },
        )
        card["workers"] += 1
        card["created"] = min(card["created"], ready)
    return models


@router.get("/models")
async def list_models(request: Request) -> dict[str, Any]:
    """The models the worker pool serves now, as running workers announce them. A model whose
    pool is scaled to zero is not listed, but still takes jobs (STRUCTQ_MODEL and
    STRUCTQ_EXTRA_MODELS); they wait in its queue for a worker."""
    models = await _served(request)
    return {"object": "list", "data": [models[name] for name in sorted(models)]}


@router.get("/models/{model:path}")
async def get_model(model: str, request: Request) -> dict[str, Any]:
    card = (await _served(request)).get(model)
    if card is None:
        raise ModelNotFound(f"The model `{model}` is not served now.", param="model")
    return card


def _known(model: str, settings: ApiSettings) -> None:
    if model not in settings.models:
        raise ModelNotFound(
            f"The model `{model}` does not exist; served: {', '.join(settings.models)}",
            param="model",
        )


@router.post("/chat/completions", response_model=None)
async def chat_completions(
    body: ChatRequest,
    request: Request,
    store: StoreDep,
    settings: SettingsDep,
    waiters: WaitersDep,
    client: ClientDep,
) -> JSONResponse | StreamingResponse:
    """OpenAI's chat completions, with vLLM's extra sampling and structured-output fields."""
    _known(body.model, settings)
    jobs = chat_jobs(body, settings.max_tokens_limit, settings.openai_wait_s)
    return await _answer("chat", body, jobs, request, store, settings, waiters, client)


@router.post("/completions", response_model=None)
async def completions(
    body: CompletionRequest,
    request: Request,
    store: StoreDep,
    settings: SettingsDep,
    waiters: WaitersDep,
    client: ClientDep,
) -> JSONResponse | StreamingResponse:
    """OpenAI's (legacy) completions: a prompt or a list of prompts."""
    _known(body.model, settings)
    jobs = completion_jobs(body, settings.max_tokens_limit, settings.openai_wait_s)
    return await _answer("completion", body, jobs, request, store, settings, waiters, client)


async def _answer(
    kind: ChunkKind,
    body: ChatRequest | CompletionRequest,
    jobs: list[JobCreate],
    request: Request,
    store: AsyncJobStore,
    settings: ApiSettings,
    waiters: CompletionWaiters,
    client: str,
) -> JSONResponse | StreamingResponse:
    ids: list[str] = []
    try:
        for job in jobs:
            ids.append((await service.submit(store, settings, job, client)).job_id)
    except BaseException:
        await _cancel(store, ids)  # all of the request's jobs or none
        raise
    rid = ("chatcmpl-" if kind == "chat" else "cmpl-") + ids[0].replace("-", "")
    headers = {"X-Structq-Job-Ids": ",".join(ids)}
    wait_s = settings.openai_wait_s + _GRACE_S
    if body.stream:
        events = _sse(kind, body, rid, ids, request.app.state.stream_redis, store, wait_s)
        return StreamingResponse(events, media_type="text/event-stream", headers=headers)
    finished = await _wait_unless_gone(request, store, waiters, ids, wait_s)
    if finished is None:  # nobody to answer: stop the work, as vLLM aborts a dropped request
        await _cancel(store, ids)
        return JSONResponse({}, status_code=499)
    outcomes = [outcome(job, job_id) for job, job_id in zip(finished, ids, strict=True)]
    await _cancel(store, [job_id for job_id, o in zip(ids, outcomes, strict=True) if o.error])
    for o in outcomes:
        if o.error is not None:
            return openai_error_response(o.error, headers)
    build = chat_response if kind == "chat" else completion_response
    return JSONResponse(build(rid, body.model, outcomes, body.n), headers=headers)


async def _wait_unless_gone(
    request: Request,
    store: AsyncJobStore,
    waiters: CompletionWaiters,
    ids: list[str],
    wait_s: float,
) -> list[JobPublic | None] | None:
    """The jobs once finished (or at the timeout); None if the client disconnected first."""
    waiting = asyncio.create_task(service.wait_all(store, waiters, ids, wait_s))
    try:
        while True:
            done, _ = await asyncio.wait({waiting}, timeout=_DISCONNECT_CHECK_S)
            if done:
                return waiting.result()
            if await request.is_disconnected():
                return None
    finally:
        if not waiting.done():
            waiting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await waiting


async def _cancel(store: AsyncJobStore, job_ids: list[str]) -> None:
    for job in await store.get_many(job_ids):
        if job is not None and not job.status.terminal:
            await service.cancel(store, job, "the OpenAI-compatible request ended first")


def _event(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, separators=(',', ':'))}\n\n"


async def _sse(
    kind: ChunkKind,
    body: ChatRequest | CompletionRequest,
    rid: str,
    ids: list[str],
    streams: Any,
    store: AsyncJobStore,
    wait_s: float,
) -> AsyncIterator[str]:
    created = int(time.time())
    outcomes: list[Outcome | None] = [None] * len(ids)
    failed: StructqError | None = None
    try:
        if kind == "chat":
            for i in range(len(ids)):
                yield _event(chunk(kind, rid, body.model, created, i, "", role=True))
        async for event in relay(streams, store, ids, wait_s):
            if isinstance(event, Delta):
                yield _event(chunk(kind, rid, body.model, created, event.index, event.text))
                continue
            result = outcome(event.job, ids[event.index])
            outcomes[event.index] = result
            if result.error is not None:
                failed = result.error
                break
            rest = result.text
            if rest.startswith(event.relayed):
                rest = rest[len(event.relayed) :]
            elif event.relayed:
                failed = StructqError(
                    f"job {ids[event.index]} was re-run after its worker was lost; the text "
                    "streamed so far is not its final output (read the job for it)"
                )
                break
            yield _event(
                chunk(
                    kind,
                    rid,
                    body.model,
                    created,
                    event.index,
                    rest or None if kind == "chat" else rest,
                    finish_reason=result.finish_reason,
                )
            )
        if failed is None and body.include_usage:
            done = [o for o in outcomes if o is not None]
            yield _event(
                {
                    "id": rid,
                    "object": "chat.completion.chunk" if kind == "chat" else "text_completion",
                    "created": created,
                    "model": body.model,
                    "choices": [],
                    "usage": usage(done, body.n),
                }
            )
        if failed is not None:
            yield _event({"error": _error_body(failed)})
        yield "data: [DONE]\n\n"
    finally:
        # The client went away, or a choice failed: stop the rest, shielded from the
        # cancellation that may have brought us here.
        unfinished = [job_id for job_id, o in zip(ids, outcomes, strict=True) if o is None]
        if unfinished or failed is not None:
            with anyio.CancelScope(shield=True):
                await _cancel(store, ids)


def _error_body(exc: StructqError) -> dict[str, Any]:
    return openai_error(exc.http_status, exc.message, exc.code, exc.extra.get("param"))
