"""Runs one job: claim it, generate on the engine, check the output, record the outcome.

Every outcome is one atomic status change in the job store: ``queued → running`` when the
engine takes the job, then ``running → succeeded | failed``. A job that fails does so with
a code and a reason; nothing here can leave a job ``running`` short of the process dying.
"""

from __future__ import annotations

import logging

from shared.errors import JobFailure, OutputInvalid, OutputTruncated
from shared.jobs import EngineStats, Job, JobError, JobResult, JobStatus, Usage, utcnow
from shared.output_types import OutputMismatch, TextSpec
from shared.store import JobStore
from worker.engine import Engine, Generation
from worker.structured import sampling_params

__all__ = ["JobRunner"]

log = logging.getLogger(__name__)


class JobRunner:
    def __init__(self, store: JobStore, engine: Engine, worker_id: str) -> None:
        self._store = store
        self._engine = engine
        self._worker_id = worker_id

    def run(self, job_id: str) -> None:
        job = self._store.get(job_id)
        if job is None:
            log.warning("job %s is gone (expired or deleted); skipping", job_id)
            return
        if job.status is not JobStatus.QUEUED:
            log.info("job %s is %s, not queued; skipping", job_id, job.status)
            return
        running = job.model_copy(
            update={
                "status": JobStatus.RUNNING,
                "started_at": utcnow(),
                "attempts": job.attempts + 1,
            }
        )
        if not self._store.transition(running, [JobStatus.QUEUED]):
            log.info("job %s changed before it could start; skipping", job_id)
            return
        self._store.transition(self._finish(running), [JobStatus.RUNNING])

    def _finish(self, job: Job) -> Job:
        generation: Generation | None = None
        update: dict[str, object]
        try:
            prompt = job.prompt if job.messages is None else self._engine.render_chat(job.messages)
            request_id = f"{job.id}-{job.attempts}"
            generation = self._engine.submit(request_id, prompt, sampling_params(job)).result()
            update = {"status": JobStatus.SUCCEEDED, "result": _result(job, generation)}
        except JobFailure as exc:
            update = {
                "status": JobStatus.FAILED,
                "error": JobError(code=exc.code, message=exc.message, text=exc.text),
            }
        except Exception as exc:  # a bug of ours: the job still ends, with a reason
            log.exception("job %s failed unexpectedly", job.id)
            update = {
                "status": JobStatus.FAILED,
                "error": JobError(code="internal_error", message=f"{type(exc).__name__}: {exc}"),
            }
        if generation is not None:
            error = update.get("error")
            if isinstance(error, JobError):
                update["error"] = error.model_copy(update={"usage": _usage(generation)})
            update["engine"] = EngineStats(
                worker=self._worker_id,
                first_step=generation.first_step,
                last_step=generation.last_step,
                max_batch=generation.max_batch,
            )
        return job.model_copy(update={**update, "finished_at": utcnow()})


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
