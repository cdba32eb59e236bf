"""Streamed OpenAI-compatible answers: the jobs' tokens relayed as server-sent events
(``api.streams`` reads them from the workers' Redis streams), in OpenAI's chunk format, with
the final chunk of each choice, usage when asked, and ``[DONE]``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

import anyio
import redis.asyncio as aioredis
from fastapi.responses import StreamingResponse

from api.errors import openai_error
from api.openai.requests import ChatRequest, CompletionRequest
from api.openai.responses import ChunkKind, Outcome, chunk, outcome, usage
from api.streams import Delta, Reset, relay
from shared.async_store import AsyncJobStore
from shared.errors import StructqError

__all__ = ["JobStream", "sse"]

log = logging.getLogger(__name__)

# A stream with nothing to send for this long sends an SSE comment (proxies, idle timeouts).
_KEEPALIVE_S = 15.0


class JobStream(StreamingResponse):
    """Server-sent events whose jobs are cancelled (``on_close``) however the response ends:
    finished, failed, or the client gone (even before the first event, when Starlette cancels the
    response without ever running the generator's own clean-up)."""

    def __init__(
        self,
        events: AsyncGenerator[str, None],
        on_close: Callable[[], Awaitable[None]],
        headers: dict[str, str],
    ) -> None:
        super().__init__(events, media_type="text/event-stream", headers=headers)
        self._events = events
        self._on_close = on_close

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                with contextlib.suppress(Exception):
                    await self._events.aclose()
                await self._on_close()


def _event(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, separators=(',', ':'))}\n\n"


async def sse(
    kind: ChunkKind,
    body: ChatRequest | CompletionRequest,
    model: str,
    rid: str,
    ids: list[str],
    streams: aioredis.Redis,
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
            if isinstance(event, Reset):  # OpenAI's chunks cannot take text back
                failed = _not_final(ids[event.index])
                break
            result = outcome(event.job, ids[event.index])
            outcomes[event.index] = result
            if result.error is not None:
                failed = result.error
                break
            rest = result.text
            if rest.startswith(event.relayed):
                rest = rest[len(event.relayed) :]
            else:
                failed = _not_final(ids[event.index])
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


def _not_final(job_id: str) -> StructqError:
    return StructqError(
        f"the text streamed for job {job_id} is not its final output (its run was interrupted "
        "and re-run, and the re-run wrote otherwise, or stream entries were lost); read the job "
        "for its output"
    )
