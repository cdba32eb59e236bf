"""The job's state machine, as the status changes each actor makes (``shared.store.Change``).

::

    queued ──claim──▶ running ──▶ succeeded | failed | cancelled
      │  ▲               │
      │  └──re-queue─────┘  (worker died, engine died, drained; within max_attempts)
      ├──▶ cancelled        (client cancel, admin purge)
      ├──▶ failed           (a worker cannot read the job as stored)
      └──▶ expired          (deadline passed before a worker started it)
    failed | cancelled | expired ──retry──▶ queued

Gateway, janitor and worker all build their changes here, so each transition's guards and
side effects (the task message of a re-queued job, the dead-letter entry) are written once.
"""

from __future__ import annotations

import uuid
from datetime import timedelta

from shared.celery_message import task_message
from shared.jobs import Job, JobError, JobStatus, utcnow
from shared.keys import kombu_priority, queue_list, queue_name, task_id_for
from shared.store import Change

__all__ = [
    "MAX_ATTEMPTS_EXCEEDED",
    "cancel_queued",
    "claim",
    "enqueue_message",
    "expire",
    "fail_or_requeue",
    "finish",
    "refuse",
    "requeue",
    "retry",
]

MAX_ATTEMPTS_EXCEEDED = "max_attempts_exceeded"


def enqueue_message(job: Job, *, fresh: bool = False) -> tuple[str, str]:
    """(list, message) that queue ``job`` for its model's pool at its priority. ``fresh``
    gives the message a new task id: a re-queued job's earlier message may still be in flight
    (unacknowledged on a dead worker), and kombu keys those by task id."""
    suffix = uuid.uuid4().hex[:12] if fresh else ""
    message = task_message(
        job.id,
        queue_name(job.model),
        task_id=task_id_for(job.id, suffix),
        priority=kombu_priority(job.priority),
    )
    return queue_list(job.model, job.priority), message


def claim(job: Job, worker: str) -> Change:
    """``queued → running``: a worker starts the job's next attempt."""
    running = job.model_copy(
        update={
            "status": JobStatus.RUNNING,
            "started_at": utcnow(),
            "finished_at": None,
            "attempts": job.attempts + 1,
            "worker": worker,
        }
    )
    return Change(running, (JobStatus.QUEUED,), claim_by=worker)


def finish(job: Job, **updates: object) -> Change:
    """``running → succeeded | failed | cancelled``: the run's outcome, only if it is still
    the current run (a run the janitor gave up on must not overwrite its successor)."""
    done = job.model_copy(update={**updates, "finished_at": utcnow()})
    return Change(done, (JobStatus.RUNNING,), expected_run=job.attempts)


def requeue(job: Job, *, give_back: bool = False) -> Change:
    """``running → queued`` for another attempt (``give_back``: the run does not count)."""
    attempts = job.attempts - 1 if give_back else job.attempts
    queued = job.model_copy(
        update={"status": JobStatus.QUEUED, "started_at": None, "attempts": attempts}
    )
    where, message = enqueue_message(queued, fresh=True)
    return Change(
        queued, (JobStatus.RUNNING,), expected_run=job.attempts, queue_list=where, message=message
    )


def fail_or_requeue(job: Job, max_attempts: int, reason: str) -> Change:
    """A run that ended through no fault of the output (its worker or engine died): another
    attempt, or, once ``max_attempts`` runs have ended so, ``failed`` and a dead letter."""
    if job.attempts < max_attempts:
        return requeue(job)
    failed = job.model_copy(
        update={
            "status": JobStatus.FAILED,
            "finished_at": utcnow(),
            "error": JobError(
                code=MAX_ATTEMPTS_EXCEEDED,
                message=f"gave up after {job.attempts} attempts (max_attempts); last: {reason}",
            ),
        }
    )
    return Change(failed, (JobStatus.RUNNING,), expected_run=job.attempts, dead=True)


def expire(job: Job) -> Change:
    """``queued → expired``: its deadline passed before any worker started it."""
    expired = job.model_copy(
        update={
            "status": JobStatus.EXPIRED,
            "finished_at": utcnow(),
            "error": JobError(
                code="expired", message=f"not started before its deadline ({job.deadline})"
            ),
        }
    )
    return Change(expired, (JobStatus.QUEUED,))


def refuse(job: Job, code: str, message: str) -> Change:
    """``queued → failed``: a worker that cannot run the job as written fails it at once."""
    failed = job.model_copy(
        update={
            "status": JobStatus.FAILED,
            "finished_at": utcnow(),
            "error": JobError(code=code, message=message),
        }
    )
    return Change(failed, (JobStatus.QUEUED,))


def cancel_queued(job: Job, reason: str) -> Change:
    """``queued → cancelled``: it never runs (its message is skipped, or dropped)."""
    cancelled = job.model_copy(
        update={
            "status": JobStatus.CANCELLED,
            "finished_at": utcnow(),
            "error": JobError(code="cancelled", message=reason),
        }
    )
    return Change(cancelled, (JobStatus.QUEUED,))


def retry(job: Job) -> Change:
    """``failed | cancelled | expired → queued``: run the same job again, from scratch. A job
    submitted with `timeout_s` gets that long again; an absolute deadline stays as it was."""
    deadline = job.deadline
    if job.timeout_s is not None:
        deadline = utcnow() + timedelta(seconds=job.timeout_s)
    queued = job.model_copy(
        update={
            "status": JobStatus.QUEUED,
            "deadline": deadline,
            "started_at": None,
            "finished_at": None,
            "attempts": 0,
            "retries": job.retries + 1,
            "result": None,
            "error": None,
            "engine": None,
        }
    )
    where, message = enqueue_message(queued, fresh=True)
    allowed = tuple(s for s in JobStatus if s.retryable)
    return Change(queued, allowed, queue_list=where, message=message)
