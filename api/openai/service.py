"""What an OpenAI-compatible request does: a chat or completion request from its jobs'
submission to its answer (the model list is ``api.models``).
Requests are translated into jobs by ``api.openai.requests``, finished jobs into answers by
``api.openai.responses``, streams by ``api.openai.streaming``; the routes
(``api.routes.openai``) only parse, call this, and answer.

The jobs go through the queue and the worker pool like any other; the gateway waits for them
(at most STRUCTQ_OPENAI_WAIT_S, which the jobs also carry as their ``timeout_s``, so a job
nobody waits for any more never runs on), and cancels what is left when the request ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import anyio
import redis.exceptions
from fastapi import Request, Response
from fastapi.responses import JSONResponse

from api import service, waiting
from api.auth import Caller
from api.deps import Gateway
from api.errors import JobsInFlight, openai_error_response
from api.openai.requests import ChatRequest, CompletionRequest, chat_jobs, completion_jobs
from api.openai.responses import ChunkKind, chat_response, completion_response, outcome
from api.openai.streaming import JobStream, sse
from api.waiters import CompletionWaiters
from shared.async_store import AsyncJobStore
from shared.jobs import JobPublic

__all__ = ["complete"]

log = logging.getLogger(__name__)

# How much longer than the jobs' own timeout the gateway waits for their final status.
_GRACE_S = 5.0
# How often a waiting request checks whether its client is still there.
_DISCONNECT_CHECK_S = 1.0


async def complete(
    body: ChatRequest | CompletionRequest,
    request: Request,
    gateway: Gateway,
    caller: Caller,
) -> Response:
    """A chat or completion request: its jobs submitted (all or none), then its answer: the
    response once they finished, their tokens as server-sent events, or the error."""
    settings, store, waiters = gateway.settings, gateway.store, gateway.waiters
    kind: ChunkKind = "chat" if isinstance(body, ChatRequest) else "completion"
    # An unknown model is a 404 before any of the request's jobs is built.
    body.model = body.model or settings.model
    if gateway.admission.models is not None:
        await gateway.admission.models.route(body.model)
    if isinstance(body, ChatRequest):
        jobs = chat_jobs(body, settings.max_tokens_limit, settings.openai_wait_s)
    else:
        jobs = completion_jobs(body, settings.max_tokens_limit, settings.openai_wait_s)
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
                admission=gateway.admission,
                fit_max_tokens=fit_max_tokens,
            )
            ids.append(submitted.job_id)
    except BaseException:
        await _cancel_quietly(store, ids)  # all of the request's jobs or none
        raise
    rid = ("chatcmpl-" if kind == "chat" else "cmpl-") + ids[0].replace("-", "")
    headers = {"X-Structq-Job-Ids": ",".join(ids)}
    wait_s = settings.openai_wait_s + _GRACE_S
    model = body.model
    if body.stream:
        streams = request.app.state.stream_redis
        events = sse(kind, body, model, rid, ids, streams, store, wait_s)
        return JobStream(events, lambda: _cancel_quietly(store, ids), headers=headers)
    try:
        finished = await _wait_unless_gone(request, store, waiters, ids, wait_s)
        if finished is None:  # nobody to answer: stop the work, as vLLM aborts a dropped request
            await _cancel_unfinished(store, ids)
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


async def _cancel_unfinished(store: AsyncJobStore, job_ids: list[str]) -> None:
    """Cancel whichever of the jobs has not finished."""
    for job in await store.get_many(job_ids):
        if job is not None and not job.status.terminal:
            await service.cancel(store, job, "the OpenAI-compatible request ended first")


async def _cancel_quietly(store: AsyncJobStore, job_ids: list[str]) -> None:
    """``_cancel_unfinished``, shielded from the request's cancellation; a Redis failure is only
    logged (the jobs then end at their own deadline, STRUCTQ_OPENAI_WAIT_S)."""
    with anyio.CancelScope(shield=True):
        try:
            await _cancel_unfinished(store, job_ids)
        except redis.exceptions.RedisError as exc:
            log.warning("could not cancel jobs %s: %s", job_ids, exc)
