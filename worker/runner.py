"""Runs one job: claim it, generate on the engine, check the output, record the outcome.

Every outcome is one guarded status change in the job store (``shared.lifecycle``):
``queued → running`` when this worker claims the job, then ``running → succeeded | failed |
cancelled``, or back to ``queued`` when the run ended through no fault of the job (the engine
died, the worker is draining). A job that fails does so with a code and a reason; nothing
here can leave a job ``running`` short of the process dying, and then the gateway's janitor
re-queues it once this worker's heartbeat is gone.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import threading
import time
import uuid
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass

from shared import lifecycle
from shared.errors import EngineDead, JobAborted, JobFailure, OutputInvalid, OutputTruncated
from shared.jobs import EngineStats, Job, JobError, JobResult, JobStatus, Usage
from shared.output_types import OutputMismatch, TextSpec
from shared.store import Change, JobStore
from worker.engine import Engine, Generation
from worker.settings import WorkerSettings
from worker.streams import DeltaPublisher
from worker.structured import sampling_params

__all__ = ["FAULT_KEY", "JobRunner", "NotTaking"]

log = logging.getLogger(__name__)

# Job metadata key read when STRUCTQ_FAULT_INJECTION is on (tests of crash recovery only).
FAULT_KEY = "structq.fault"
# How often a waiting run re-checks its job's cancel flag in Redis (a backstop for a cancel
# message this worker missed, e.g. across a Redis reconnect).
_CANCEL_CHECK_S = 5.0


class NotTaking(Exception):
    """This worker takes no new job now (draining, or its engine is gone): the task's message
    goes back to the queue for another worker."""


@dataclass(slots=True)
class _Active:
    request_id: str | None = None
    cancel: bool = False


class JobRunner:
    def __init__(
        self,
        store: JobStore,
        engine: Engine,
        settings: WorkerSettings,
        streams: DeltaPublisher | None = None,
    ) -> None:
        self._store = store
        self._engine = engine
        self._streams = streams
        self._settings = settings
        self._worker_id = settings.worker_id
        self._active: dict[str, _Active] = {}
        self._lock = threading.Lock()
        self._draining = threading.Event()

    # -- called from other threads ----------------------------------------------------

    def cancel(self, job_id: str) -> None:
        """A client cancelled ``job_id``: abort its request if this worker runs it."""
        with self._lock:
            active = self._active.get(job_id)
            if active is None:
                return
            active.cancel = True
            request_id = active.request_id
        if request_id is not None:
            self._engine.abort(request_id, "cancelled")

    def drain(self) -> None:
        """Take no new job; those running keep going (until ``requeue_running``)."""
        self._draining.set()

    def requeue_running(self) -> None:
        """The drain ran out of time: stop every running request; each job is re-queued."""
        self._engine.abort_all("drain")

    # -- a task thread ----------------------------------------------------------------

    def run(self, job_id: str) -> None:
        job, problem = self._store.get_readable(job_id)
        if job is None:
            if problem is None:
                log.warning("job %s is gone (expired or deleted); skipping", job_id)
            else:
                log.error("job %s's record cannot be read at all, left as is: %s", job_id, problem)
            return
        if job.status is not JobStatus.QUEUED:
            log.info("job %s is %s, not queued; skipping", job_id, job.status)
            return
        if problem is not None:
            log.error("job %s cannot be read as stored: %s", job_id, problem)
            message = (
                "this worker cannot read the job as stored (a gateway newer than the "
                f"worker?): {problem}"
            )
            self._store.apply(lifecycle.refuse(job, "unreadable_job", message))
            return
        if self._draining.is_set() or not self._engine.alive:
            raise NotTaking(job_id)
        deadline = job.deadline_ts()
        if deadline is not None and deadline <= time.time():
            self._store.apply(lifecycle.expire(job))
            return
        active = _Active()
        with self._lock:
            self._active[job_id] = active
        try:
            claim = lifecycle.claim(job, self._worker_id)
            run_tag = uuid.uuid4().hex[:12]  # tells this run's stream entries from another's
            if not self._store.apply(claim):
                log.info("job %s changed before it could start; skipping", job_id)
                return
            if self._settings.fault_injection and job.metadata.get(FAULT_KEY) == "kill-worker":
                log.critical("job %s asks for this worker's death (fault injection)", job_id)
                os.kill(os.getpid(), signal.SIGKILL)
            change = self._run(claim.job, active, run_tag)
            self._store.apply(change)
            if claim.job.stream and self._streams is not None and change.job.status.terminal:
                self._streams.end(job_id, run_tag)  # a re-queued job's next run goes on
        finally:
            with self._lock:
                self._active.pop(job_id, None)

    def _run(self, job: Job, active: _Active, run_tag: str) -> Change:
        try:
            prompt = job.prompt if job.messages is None else self._engine.render_chat(job.messages)
            request_id = f"{job.id}-{job.attempts}"
            on_delta = None
            if job.stream and self._streams is not None:
                on_delta = functools.partial(self._streams.delta, job.id, run_tag)
            future = self._engine.submit(request_id, prompt, sampling_params(job), on_delta)
            with self._lock:
                active.request_id = request_id
                cancel = active.cancel
            if cancel:
                self._engine.abort(request_id, "cancelled")
            generation = self._wait(job, request_id, future)
        except JobAborted as exc:
            return self._aborted(job, exc)
        except EngineDead as exc:
            # Not the job's fault: another attempt elsewhere, within max_attempts.
            return lifecycle.fail_or_requeue(job, self._settings.max_attempts, exc.message)
        except JobFailure as exc:
            return lifecycle.finish(job, status=JobStatus.FAILED, error=_error(exc))
        except Exception as exc:  # a bug of ours: the job still ends, with a reason
            log.exception("job %s failed unexpectedly", job.id)
            error = JobError(code="internal_error", message=f"{type(exc).__name__}: {exc}")
            return lifecycle.finish(job, status=JobStatus.FAILED, error=error)
        stats = self._stats(generation)
        try:
            result = _result(job, generation)
        except JobFailure as exc:
            error = _error(exc, generation)
            return lifecycle.finish(job, status=JobStatus.FAILED, error=error, engine=stats)
        return lifecycle.finish(job, status=JobStatus.SUCCEEDED, result=result, engine=stats)

    def _wait(self, job: Job, request_id: str, future: Future[Generation]) -> Generation:
        """The generation, aborting it at the job's deadline (or STRUCTQ_MAX_RUN_S)."""
        limit = time.time() + self._settings.max_run_s
        deadline = job.deadline_ts()
        if deadline is not None:
            limit = min(limit, deadline)
        while True:
            remaining = limit - time.time()
            if remaining <= 0:
                self._engine.abort(request_id, "deadline")
                return future.result()
            try:
                return future.result(timeout=min(remaining, _CANCEL_CHECK_S))
            except FutureTimeout:
                if self._store.cancel_requested(job.id):
                    self._engine.abort(request_id, "cancelled")

    def _aborted(self, job: Job, exc: JobAborted) -> Change:
        generation = exc.generation if isinstance(exc.generation, Generation) else None
        stats = None if generation is None else self._stats(generation)
        if exc.reason == "drain":
            log.info("job %s re-queued: this worker is draining", job.id)
            return lifecycle.requeue(job, give_back=True)
        if exc.reason == "cancelled":
            error = JobError(
                code="cancelled", message="cancelled by the client while running", text=exc.text
            )
            status = JobStatus.CANCELLED
        else:
            limit = "its deadline" if job.deadline is not None else "STRUCTQ_MAX_RUN_S"
            error = JobError(
                code="deadline_exceeded",
                message=f"still running at {limit}; aborted",
                text=exc.text,
            )
            status = JobStatus.FAILED
        if generation is not None:
            error = error.model_copy(update={"usage": _usage(generation)})
        return lifecycle.finish(job, status=status, error=error, engine=stats)

    def _stats(self, generation: Generation) -> EngineStats:
        return EngineStats(
            worker=self._worker_id,
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
