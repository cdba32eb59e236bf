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
import logging
import time
from collections.abc import AsyncGenerator
from typing import Any

import anyio
import redis.exceptions
from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from api import service, waiting
from api.auth import Caller, CallerDep, authenticate
from api.deps import SettingsDep, StoreDep, WaitersDep
from api.errors import JobsInFlight, ModelNotFound, openai_error, openai_error_response
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
from shared.async_store import AsyncJobStore
from shared.errors import StructqError
from shared.jobs import JobCreate, JobPublic
from shared.workers import live_workers

__all__ = ["router"]

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1", tags=["openai"], dependencies=[Depends(authenticate)])

# How much longer than the jobs' own timeout the gateway waits for their final status.
_GRACE_S = 5.0
# How often a waiting request checks whether its client is still there.
_DISCONNECT_CHECK_S = 1.0
# A stream with nothing to send for this long sends an SSE comment (proxies, idle timeouts).
_KEEPALIVE_S = 15.0


async def _served(request: Request) -> dict[str, dict[str, Any]]:
    """The models running workers announce (their heartbeat keys), with a worker count."""
    models: dict[str, dict[str, Any]] = {}
    for worker in await live_workers(request.app.state.redis):
        ready = int(worker.ready_at.timestamp())
        card = models.setdefault(
            worker.model,
            {
                "id": worker.model,
                "object": "model",
                "created": ready,
                "owned_by": "structq",
                "root": worker.model,
                "max_model_len": worker.max_model_len,
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


def _resolve_model(body: ChatRequest | CompletionRequest, settings: ApiSettings) -> None:
    body.model = body.model or settings.model
    if body.model not in settings.models:
        raise ModelNotFound(
            f"The model `{body.model}` does not exist; served: {', '.join(settings.models)}",
            param="model",
        )


@router.post("/chat/completions", response_model=None)
async def chat_completions(
    body: ChatRequest,
    request: Request,
    store: StoreDep,
    settings: SettingsDep,
    waiters: WaitersDep,
    caller: CallerDep,
) -> Response:
    """OpenAI's chat completions, with vLLM's extra sampling and structured-output fields."""
    _resolve_model(body, settings)
    jobs = chat_jobs(body, settings.max_tokens_limit, settings.openai_wait_s)
    return await _answer("chat", body, jobs, request, store, settings, waiters, caller)


@router.post("/completions", response_model=None)
async def completions(
    body: CompletionRequest,
    request: Request,
    store: StoreDep,
    settings: SettingsDep,
    waiters: WaitersDep,
    caller: CallerDep,
) -> Response:
    """OpenAI's (legacy) completions: a prompt or a list of prompts."""
    _resolve_model(body, settings)
    jobs = completion_jobs(body, settings.max_tokens_limit, settings.openai_wait_s)
    return await _answer("completion", body, jobs, request, store, settings, waiters, caller)


async def _answer(
    kind: ChunkKind,
    body: ChatRequest | CompletionRequest,
    jobs: list[JobCreate],
    request: Request,
    store: AsyncJobStore,
    settings: ApiSettings,
    waiters: CompletionWaiters,
    caller: Caller,
) -> Response:
    # No max_tokens given: what the context leaves after the prompt (as vLLM's server does).
    fit_max_tokens = body.max_tokens is None and (
        not isinstance(body, ChatRequest) or body.max_completion_tokens is None
    )
    ids: list[str] = []
    try:
        for job in jobs:
            submitted = await service.submit(
                store,
                settings,
                job,
                caller,
                admission=request.app.state.admission,
                fit_max_tokens=fit_max_tokens,
            )
            ids.append(submitted.job_id)
    except BaseException:
        await _cancel_quietly(store, ids)  # all of the request's jobs or none
        raise
    rid = ("chatcmpl-" if kind == "chat" else "cmpl-") + ids[0].replace("-", "")
    headers = {"X-Structq-Job-Ids": ",".join(ids)}
    wait_s = settings.openai_wait_s + _GRACE_S
    model = body.model or settings.model
    if body.stream:
        events = _sse(kind, body, model, rid, ids, request.app.state.stream_redis, store, wait_s)
        return _JobStream(events, store, ids, headers=headers)
    try:
        finished = await _wait_unless_gone(request, store, waiters, ids, wait_s)
        if finished is None:  # nobody to answer: stop the work, as vLLM aborts a dropped request
            await _cancel(store, ids)
            return Response(status_code=499)
    except redis.exceptions.RedisError as exc:
        log.warning("job store failed while jobs %s ran: %s", ids, exc)
        await _cancel_quietly(store, ids)
        raise JobsInFlight(
            "the job store failed while the request's jobs ran; they were cancelled where "
            f"possible: {', '.join(ids)}"
        ) from None
    outcomes = [outcome(job, job_id) for job, job_id in zip(finished, ids, strict=True)]
    if any(o.error is not None for o in outcomes):
        await _cancel_quietly(store, ids)  # the request has failed: its other choices stop
        error = next(o.error for o in outcomes if o.error is not None)
        return openai_error_response(error, headers)
    build = chat_response if kind == "chat" else completion_response
    return JSONResponse(build(rid, model, outcomes, body.n or 1), headers=headers)


def _any_failed(jobs: list[JobPublic | None]) -> bool:
    return any(
        job is None or (job.status.terminal and outcome(job, job.id).error is not None)
        for job in jobs
    )


async def _wait_unless_gone(
    request: Request,
    store: AsyncJobStore,
    waiters: CompletionWaiters,
    ids: list[str],
    wait_s: float,
) -> list[JobPublic | None] | None:
    """The jobs once finished, one has failed, or at the timeout; None if the client
    disconnected first."""
    task = asyncio.create_task(
        waiting.wait_all(store, waiters, ids, wait_s, stop_early=_any_failed)
    )
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=_DISCONNECT_CHECK_S)
            if done:
                return task.result()
            if await request.is_disconnected():
                return None
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def _cancel(store: AsyncJobStore, job_ids: list[str]) -> None:
    """Cancel whichever of the jobs has not finished."""
    for job in await store.get_many(job_ids):
        if job is not None and not job.status.terminal:
            await service.cancel(store, job, "the OpenAI-compatible request ended first")


async def _cancel_quietly(store: AsyncJobStore, job_ids: list[str]) -> None:
    """``_cancel``, shielded from the request's cancellation; a Redis failure is only logged
    (the jobs then end at their own deadline, STRUCTQ_OPENAI_WAIT_S)."""
    with anyio.CancelScope(shield=True):
        try:
            await _cancel(store, job_ids)
        except redis.exceptions.RedisError as exc:
            log.warning("could not cancel jobs %s: %s", job_ids, exc)


class _JobStream(StreamingResponse):
    """Server-sent events whose jobs are cancelled however the response ends: finished,
    failed, or the client gone (even before the first event, when Starlette cancels the
    response without ever running the generator's own clean-up)."""

    def __init__(
        self,
        events: AsyncGenerator[str, None],
        store: AsyncJobStore,
        ids: list[str],
        headers: dict[str, str],
    ) -> None:
        super().__init__(events, media_type="text/event-stream", headers=headers)
        self._events = events
        self._store = store
        self._ids = ids

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                with contextlib.suppress(Exception):
                    await self._events.aclose()
                await _cancel_quietly(self._store, self._ids)


def _event(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, separators=(',', ':'))}\n\n"


async def _sse(
    kind: ChunkKind,
    body: ChatRequest | CompletionRequest,
    model: str,
    rid: str,
    ids: list[str],
    streams: Any,
    store: AsyncJobStore,
    wait_s: float,
) -> AsyncGenerator[str, None]:
    created = int(time.time())
    outcomes: list[Outcome | None] = [None] * len(ids)
    failed: StructqError | None = None
    if kind == "chat":
        for i in range(len(ids)):
            yield _event(chunk(kind, rid, model, created, i, "", role=True))
    try:
        async for event in relay(streams, store, ids, wait_s, keepalive_s=_KEEPALIVE_S):
            if event is None:
                yield ": keep-alive\n\n"  # a comment: clients skip it, proxies see traffic
                continue
            if isinstance(event, Delta):
                yield _event(chunk(kind, rid, model, created, event.index, event.text))
                continue
            result = outcome(event.job, ids[event.index])
            outcomes[event.index] = result
            if result.error is not None:
                failed = result.error
                break
            rest = result.text
            if rest.startswith(event.relayed):
                rest = rest[len(event.relayed) :]
            else:
                failed = StructqError(
                    f"the text streamed for job {ids[event.index]} is not its final output (its "
                    "run was interrupted and re-run, or stream entries were lost); read the "
                    "job for its output"
                )
                break
            text: str | None = rest
            if kind == "chat" and not rest:
                text = None
            yield _event(
                chunk(
                    kind,
                    rid,
                    model,
                    created,
                    event.index,
                    text,
                    finish_reason=result.finish_reason,
                )
            )
    except Exception as exc:  # Redis gone, a record this gateway cannot read: end cleanly
        log.exception("stream %s failed", rid)
        failed = StructqError(f"the stream failed: {type(exc).__name__}")
    if failed is None and body.include_usage:
        done = [o for o in outcomes if o is not None]
        yield _event(
            {
                "id": rid,
                "object": "chat.completion.chunk" if kind == "chat" else "text_completion",
                "created": created,
                "model": model,
                "choices": [],
                "usage": usage(done, body.n or 1),
            }
        )
    if failed is not None:
        yield _event({"error": _error_body(failed)})
    yield "data: [DONE]\n\n"


def _error_body(exc: StructqError) -> dict[str, Any]:
    return openai_error(exc.http_status, exc.message, exc.code, exc.extra.get("param"))
