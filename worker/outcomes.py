"""How a job's run ended, as the status change that records it: a result parsed for the job's
output type, a failure with its code, an abort (cancelled, past its deadline, or given back on
a drain), a dead engine's or a lost run sent back to the queue, or a bug of ours failing it.
Pure functions of the engine's outcome; the runner (``worker.runner``) writes what they return.
"""

from __future__ import annotations

import logging

from shared import lifecycle
from shared.errors import (
    EngineDead,
    ErrorCode,
    JobAborted,
    JobFailure,
    OutputInvalid,
    OutputMismatch,
    OutputTruncated,
)
from shared.jobs import EngineStats, Job, JobError, JobResult, JobStatus, Usage
from shared.lifecycle import Change
from shared.output_types import TextSpec
from worker.engine_types import AbortReason, Done, Generation

__all__ = ["crashed", "finished", "lost"]

log = logging.getLogger(__name__)


def finished(job: Job, run: str, done: Done, worker_id: str, max_attempts: int) -> Change:
    """The status change that records how ``run`` of ``job`` ended on the engine."""
    error, generation = done.error, done.generation
    if isinstance(error, JobAborted):
        return _aborted(job, run, error, worker_id)
    if isinstance(error, EngineDead):
        # Not the job's fault: another attempt elsewhere, within max_attempts.
        return lifecycle.fail_or_requeue(job, run, max_attempts, error.message)
    if error is not None:
        return lifecycle.finish(job, run, status=JobStatus.FAILED, error=_error(error))
    if generation is None:
        raise ValueError("a request that ended without an error has a generation")
    stats = _stats(generation, worker_id)
    try:
        result = _result(job, generation)
    except JobFailure as exc:
        return lifecycle.finish(
            job, run, status=JobStatus.FAILED, error=_error(exc, generation), engine=stats
        )
    return lifecycle.finish(job, run, status=JobStatus.SUCCEEDED, result=result, engine=stats)


def crashed(job: Job, run: str, exc: Exception) -> Change:
    """The status change that fails ``run`` of ``job`` when recording its end raised ``exc`` (a
    bug of ours): the job still ends, with a reason."""
    error = JobError(code=ErrorCode.INTERNAL_ERROR, message=f"{type(exc).__name__}: {exc}")
    return lifecycle.finish(job, run, status=JobStatus.FAILED, error=error)


def lost(job: Job, run: str, worker_id: str, max_attempts: int) -> Change:
    """The status change for ``run`` of ``job``, claimed by ``worker_id`` in Redis but not
    running there (the worker lost track of it): another attempt, within ``max_attempts``."""
    return lifecycle.fail_or_requeue(job, run, max_attempts, f"worker {worker_id} lost track of it")


def _aborted(job: Job, run: str, exc: JobAborted, worker_id: str) -> Change:
    generation = exc.generation if isinstance(exc.generation, Generation) else None
    stats = None if generation is None else _stats(generation, worker_id)
    if exc.reason == AbortReason.DRAIN:
        log.info("job %s re-queued: this worker is draining", job.id)
        return lifecycle.requeue(job, run, give_back=True)
    if exc.reason == AbortReason.CANCELLED:
        error = JobError(
            code=ErrorCode.CANCELLED,
            message="cancelled by the client while running",
            text=exc.text,
        )
        status = JobStatus.CANCELLED
    else:
        limit = "its deadline" if job.deadline is not None else "STRUCTQ_MAX_RUN_S"
        error = JobError(
            code=ErrorCode.DEADLINE_EXCEEDED,
            message=f"still running at {limit}; aborted",
            text=exc.text,
        )
        status = JobStatus.FAILED
    if generation is not None:
        error = error.model_copy(update={"usage": _usage(generation)})
    return lifecycle.finish(job, run, status=status, error=error, engine=stats)


def _stats(generation: Generation, worker_id: str) -> EngineStats:
    return EngineStats(
        worker=worker_id,
        first_step=generation.first_step,
        last_step=generation.last_step,
        max_batch=generation.max_batch,
        engine_s=round(generation.engine_s, 6),
    )


def _error(exc: JobFailure, generation: Generation | None = None) -> JobError:
    usage = None if generation is None else _usage(generation)
    return JobError(code=exc.code, message=exc.message, text=exc.text, usage=usage)


def _result(job: Job, generation: Generation) -> JobResult:
    """The result, with the text parsed for the job's output type, or the reason it can't be."""
    text = generation.text
    # A constrained output cut by max_tokens is not complete even when the prefix happens to
    # conform (an int cut after ten digits is still a valid int): the grammar had not ended.
    cut = generation.finish_reason == "length" and not isinstance(job.output_type, TextSpec)
    try:
        value = job.output_type.parse(text)
    except OutputMismatch as exc:
        if not cut:
            raise OutputInvalid(str(exc), text) from None
        reason = str(exc)
    else:
        reason = "the output had not reached the end of its type"
    if cut:
        raise OutputTruncated(
            f"generation reached max_tokens ({job.sampling.max_tokens}) before the output was "
            f"complete: {reason}",
            text,
        )
    return JobResult(
        text=text,
        value=value,
        finish_reason=generation.finish_reason,
        usage=_usage(generation),
    )


def _usage(generation: Generation) -> Usage:
    return Usage(
        prompt_tokens=generation.prompt_tokens, completion_tokens=generation.completion_tokens
    )
