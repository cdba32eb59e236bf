"""Finished jobs as OpenAI-compatible answers: each job is one choice (``Outcome``), the
choices make a ``chat.completion`` or ``text_completion`` (or, streamed, its chunks), and a
failed job fails the request with the error the OpenAI routes answer.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Literal

from api.errors import JobFailedError, JobRefused, JobTimedOut
from shared.errors import ErrorCode, StructqError
from shared.jobs import JobPublic, JobStatus

__all__ = [
    "ChunkKind",
    "Outcome",
    "chat_response",
    "chunk",
    "completion_response",
    "outcome",
    "usage",
]


@dataclass(frozen=True, slots=True)
class Outcome:
    """One finished choice, or why the request as a whole failed."""

    text: str = ""
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: StructqError | None = None


def outcome(job: JobPublic | None, job_id: str) -> Outcome:
    """A choice from a finished job. A constrained output cut by max_tokens is still an answer
    (finish_reason ``length``, as vLLM gives it); any other failure fails the request."""
    if job is None:
        return Outcome(error=JobFailedError(f"job {job_id} vanished (deleted meanwhile?)"))
    if job.result is not None:
        return Outcome(
            text=job.result.text,
            finish_reason=job.result.finish_reason,
            prompt_tokens=job.result.usage.prompt_tokens,
            completion_tokens=job.result.usage.completion_tokens,
        )
    error = job.error
    if not job.status.terminal:
        return Outcome(error=JobTimedOut(f"job {job_id} did not finish in time; cancelled"))
    if error is None:
        return Outcome(error=JobFailedError(f"job {job_id} ended {job.status.value}"))
    if error.code in (ErrorCode.OUTPUT_TRUNCATED, ErrorCode.OUTPUT_INVALID):
        spent = error.usage
        return Outcome(
            text=error.text or "",
            finish_reason="length" if error.code == ErrorCode.OUTPUT_TRUNCATED else "stop",
            prompt_tokens=0 if spent is None else spent.prompt_tokens,
            completion_tokens=0 if spent is None else spent.completion_tokens,
        )
    if error.code == ErrorCode.ENGINE_REJECTED:
        return Outcome(error=JobRefused(error.message))
    if error.code == ErrorCode.DEADLINE_EXCEEDED or job.status is JobStatus.EXPIRED:
        return Outcome(error=JobTimedOut(f"job {job_id} did not finish in time: {error.message}"))
    return Outcome(error=JobFailedError(f"job {job_id} {job.status.value}: {error.message}"))


def usage(outcomes: list[Outcome], n: int) -> dict[str, int]:
    # OpenAI counts a prompt once however many choices it has.
    prompt = sum(o.prompt_tokens for o in outcomes[::n])
    completion = sum(o.completion_tokens for o in outcomes)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def chat_response(rid: str, model: str, outcomes: list[Outcome], n: int) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": i,
                "message": {"role": "assistant", "content": o.text},
                "finish_reason": o.finish_reason,
                "logprobs": None,
            }
            for i, o in enumerate(outcomes)
        ],
        "usage": usage(outcomes, n),
    }


def completion_response(rid: str, model: str, outcomes: list[Outcome], n: int) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": i, "text": o.text, "finish_reason": o.finish_reason, "logprobs": None}
            for i, o in enumerate(outcomes)
        ],
        "usage": usage(outcomes, n),
    }


ChunkKind = Literal["chat", "completion"]


def chunk(
    kind: ChunkKind,
    rid: str,
    model: str,
    created: int,
    index: int,
    text: str | None = None,
    finish_reason: str | None = None,
    role: bool = False,
) -> dict[str, Any]:
    """One streamed chunk for one choice."""
    if kind == "chat":
        delta: dict[str, Any] = {}
        if role:
            delta["role"] = "assistant"
        if text is not None:
            delta["content"] = text
        choice: dict[str, Any] = {"index": index, "delta": delta}
        obj = "chat.completion.chunk"
    else:
        choice = {"index": index, "text": text or ""}
        obj = "text_completion"
    choice.update(logprobs=None, finish_reason=finish_reason)
    return {"id": rid, "object": obj, "created": created, "model": model, "choices": [choice]}
