"""The job's state machine: each status change an actor makes, as a :class:`Change`.

::

    queued ──claim──▶ running ──▶ succeeded | failed | cancelled
      │  ▲               │
      │  └──re-queue─────┘  (worker died, engine died, drained; within max_attempts)
      ├──▶ cancelled        (client cancel, admin purge)
      ├──▶ failed           (a worker cannot read the job as stored)
      ├──▶ expired          (deadline passed before a worker started it)
      └──▶ queued           (its task message was lost: a fresh one, by the janitor)
    failed | cancelled | expired ──retry──▶ queued

Gateway, janitor and worker all build their changes here, so each transition's guards and
side effects (the task message of a re-queued job, the dead-letter entry, the webhook event it
makes due) are written once; ``shared.store`` and ``shared.async_store`` apply them, one or
many per script call.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import timedelta

from shared.celery_message import task_message
from shared.errors import ErrorCode
from shared.jobs import Job, JobError, JobStatus, WebhookEvent, join_record, utcnow
from shared.keys import kombu_priority, queue_list, queue_name, task_id_for
from shared.records import WebhookDelivery

__all__ = [
    "Change",
    "Message",
    "cancel_queued",
    "claim",
    "enqueue_message",
    "expire",
    "fail_or_requeue",
    "finish",
    "reenqueue",
    "refuse",
    "release",
    "requeue",
    "retry",
    "run_token",
]


@dataclass(frozen=True, slots=True)
class Message:
    """A job's task message: the list it goes to, its delivery tag, its body."""

    queue_list: str
    tag: str
    body: str


@dataclass(frozen=True, slots=True)
class Change:
    """One status change: the job as it will be, and what guards and accompanies the write.

    ``job`` is None for a change that only releases a message (``release``)."""

    job: Job | None
    allowed: tuple[JobStatus, ...] = ()
    expected_run: str | None = None  # a run's own write: only while it is the current run
    new_run: str | None = None  # a claim: the new run's token
    owner: str | None = None  # a claim: the worker that runs it
    expected_tag: str | None = None  # only while this is the job's current task message
    message: Message | None = None  # (re-)queueing: its new task message
    deadline_changed: bool = False  # the job's deadline is written anew (a retry)
    dead: bool = False  # into the dead-letter list
    release: str | None = None  # a taken task message this write is done with
    held_after_ms: int | None = None  # refuse if the expected message was taken after this
    keep_state: bool = False  # the stored state stays as it is (only the message changes)
    unless_alive: str | None = None  # refuse while this worker's heartbeat key exists
    # A claim: refuse unless this worker's heartbeat key exists (its message stays taken).
    if_alive: str | None = None
    spec: bytes | None = field(default=None, compare=False)  # the stored spec, if at hand

    def webhook_event(self) -> WebhookEvent | None:
        """The webhook event this change makes due, if the job asked for it: ``started`` on
        its first claim (after submission or a retry), ``completed`` on any terminal status."""
        job = self.job
        hook = None if job is None else job.webhook
        if job is None or hook is None:
            return None
        if self.new_run is not None and job.attempts == 1 and "started" in hook.events:
            return "started"
        if job.status.terminal and "completed" in hook.events:
            return "completed"
        return None

    def delivery(self, state: str) -> WebhookDelivery | None:
        """The webhook delivery this change makes due (``state``: the job's new state JSON)."""
        event = self.webhook_event()
        job = self.job
        if event is None or job is None or job.webhook is None:
            return None
        spec = self.spec if self.spec is not None else job.spec_json().encode()
        record = join_record(spec, state).decode()
        payload = f'{{"type":"job.{event}","timestamp":"{utcnow().isoformat()}","data":{record}}}'
        return WebhookDelivery(
            id=f"msg_{uuid.uuid4().hex}",
            job_id=job.id,
            event=event,
            url=job.webhook.url,
            payload=payload,
            model=job.model,
            request_id=job.request_id,
        )


def run_token(attempt: int) -> str:
    """The token of a run: its attempt number and a nonce no other claim shares."""
    return f"{attempt}.{uuid.uuid4().hex[:10]}"


def enqueue_message(job: Job, *, fresh: bool = False) -> Message:
    """The task message that queues ``job`` for its model's pool at its priority. ``fresh``
    gives the message a new tag: a re-queued job's earlier message may still be in flight
    (taken by a dead worker), and kombu keys those by tag."""
    tag = task_id_for(job.id, uuid.uuid4().hex[:12] if fresh else "")
    body = task_message(
        job.id, queue_name(job.model), task_id=tag, priority=kombu_priority(job.priority)
    )
    return Message(queue_list(job.model, job.priority), tag, body)


def claim(job: Job, worker: str, tag: str) -> Change:
    """``queued → running``: a worker that took message ``tag`` starts the job's next attempt.
    Only while that message is the job's current one (a stale duplicate claims nothing)."""
    running = job.model_copy(
        update={
            "status": JobStatus.RUNNING,
            "started_at": utcnow(),
            "finished_at": None,
            "attempts": job.attempts + 1,
            "worker": worker,
        }
    )
    return Change(
        running,
        (JobStatus.QUEUED,),
        new_run=run_token(running.attempts),
        owner=worker,
        expected_tag=tag,
        release=tag,
    )


def finish(job: Job, run: str, **updates: object) -> Change:
    """``running → succeeded | failed | cancelled``: the run's outcome, only if it is still
    the current run (a run the janitor gave up on must not overwrite its successor)."""
    done = job.model_copy(update={**updates, "finished_at": utcnow()})
    return Change(done, (JobStatus.RUNNING,), expected_run=run)


def requeue(job: Job, run: str, *, give_back: bool = False) -> Change:
    """``running → queued`` for another attempt (``give_back``: the run does not count)."""
    attempts = job.attempts - 1 if give_back else job.attempts
    queued = job.model_copy(
        update={"status": JobStatus.QUEUED, "started_at": None, "attempts": attempts}
    )
    return Change(
        queued,
        (JobStatus.RUNNING,),
        expected_run=run,
        message=enqueue_message(queued, fresh=True),
    )


def fail_or_requeue(job: Job, run: str, max_attempts: int, reason: str) -> Change:
    """A run that ended through no fault of the output (its worker or engine died): another
    attempt, or, once ``max_attempts`` runs have ended so, ``failed`` and a dead letter."""
    if job.attempts < max_attempts:
        return requeue(job, run)
    failed = job.model_copy(
        update={
            "status": JobStatus.FAILED,
            "finished_at": utcnow(),
            "error": JobError(
                code=ErrorCode.MAX_ATTEMPTS_EXCEEDED,
                message=f"gave up after {job.attempts} attempts (max_attempts); last: {reason}",
            ),
        }
    )
    return Change(failed, (JobStatus.RUNNING,), expected_run=run, dead=True)


def expire(job: Job, release_tag: str | None = None) -> Change:
    """``queued → expired``: its deadline passed before any worker started it."""
    expired = job.model_copy(
        update={
            "status": JobStatus.EXPIRED,
            "finished_at": utcnow(),
            "error": JobError(
                code=ErrorCode.EXPIRED,
                message=f"not started before its deadline ({job.deadline})",
            ),
        }
    )
    return Change(expired, (JobStatus.QUEUED,), release=release_tag)


def refuse(job: Job, code: ErrorCode, message: str, release_tag: str | None = None) -> Change:
    """``queued → failed``: a worker that cannot run the job as written fails it at once."""
    failed = job.model_copy(
        update={
            "status": JobStatus.FAILED,
            "finished_at": utcnow(),
            "error": JobError(code=code, message=message),
        }
    )
    return Change(failed, (JobStatus.QUEUED,), release=release_tag)


def cancel_queued(job: Job, reason: str) -> Change:
    """``queued → cancelled``: it never runs (its message is skipped, or dropped)."""
    cancelled = job.model_copy(
        update={
            "status": JobStatus.CANCELLED,
            "finished_at": utcnow(),
            "error": JobError(code=ErrorCode.CANCELLED, message=reason),
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
    allowed = tuple(s for s in JobStatus if s.retryable)
    return Change(
        queued,
        allowed,
        message=enqueue_message(queued, fresh=True),
        deadline_changed=True,
    )


def reenqueue(job: Job, lost_tag: str, taken_after_ms: int) -> Change:
    """``queued → queued`` with a fresh task message: the job's message ``lost_tag`` is in no
    queue and was not taken by a consumer after ``taken_after_ms`` (a consumer that took it
    then died, or a pop whose reply was lost). Only while ``lost_tag`` is still its message."""
    return Change(
        job,
        (JobStatus.QUEUED,),
        expected_tag=lost_tag,
        message=enqueue_message(job, fresh=True),
        held_after_ms=taken_after_ms,
        keep_state=True,
    )


def release(tag: str) -> Change:
    """No status change: a taken task message the worker is done with (a stale duplicate)."""
    return Change(None, release=tag)
