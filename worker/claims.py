"""How a taken job message starts a run: the status change that claims its job (or, instead,
releases a stale message, refuses a job this worker cannot read, or expires one past its
deadline), the claimed job's engine request (its prompt and sampling parameters), and when its
run must have ended. Functions of the stored job; the runner (``worker.runner``) writes the
changes and submits the requests.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence

from shared import lifecycle
from shared.errors import EngineRejected, ErrorCode, InternalFailure
from shared.jobs import Job, Message
from shared.lifecycle import Change
from shared.store import Stored, read_job
from worker.engine_types import Done, Request
from worker.structured import sampling_params

__all__ = ["claim", "engine_request", "run_limit"]

log = logging.getLogger(__name__)


def claim(tag: str, row: Stored, worker_id: str) -> Change:
    """The claim of a taken message's job (message ``tag``, job record ``row``) by
    ``worker_id``, or what to do instead."""
    if row.status != b"queued" or row.msg != tag.encode():
        # Finished, cancelled, running elsewhere, or this is a stale copy of its message.
        log.debug("message %s is stale (job %s)", tag, row.status)
        return lifecycle.release(tag)
    job, problem = read_job(row)
    if job is None:
        log.error("the job of message %s cannot be read at all, left as is: %s", tag, problem)
        return lifecycle.release(tag)
    if problem is not None:
        log.error("job %s cannot be read as stored: %s", job.id, problem)
        message = (
            "this worker cannot read the job as stored (a gateway newer than the "
            f"worker?): {problem}"
        )
        return lifecycle.refuse(job, ErrorCode.UNREADABLE_JOB, message, release_tag=tag)
    deadline = job.deadline_ts()
    if deadline is not None and deadline <= time.time():
        return lifecycle.expire(job, release_tag=tag)
    change = lifecycle.claim(job, worker_id, tag)
    return change if job.webhook is None else dataclasses.replace(change, spec=row.spec)


def engine_request(
    job: Job,
    request_id: str,
    render_chat: Callable[[Sequence[Message]], str],
    on_delta: Callable[[str], None] | None = None,
) -> Request | Done:
    """The engine request of a claimed job, or (a ``Done`` with its error) why it fails before
    reaching the engine."""
    try:
        # A job has a prompt or messages (``JobCreate`` checks it).
        prompt = (job.prompt or "") if job.messages is None else render_chat(job.messages)
        params = sampling_params(job)
    except ValueError as exc:  # vLLM refuses the parameters
        return Done(request_id, None, EngineRejected(str(exc)))
    except Exception as exc:  # e.g. the chat template refuses the chat
        log.exception("job %s could not be prepared", job.id)
        return Done(request_id, None, InternalFailure(f"{type(exc).__name__}: {exc}"))
    return Request(request_id, prompt, params, on_delta, job.adapter)


def run_limit(job: Job, max_run_s: float) -> float:
    """When (epoch s) a run of ``job`` starting now must have ended: its deadline, or
    STRUCTQ_MAX_RUN_S from now if that comes first."""
    limit = time.time() + max_run_s
    deadline = job.deadline_ts()
    return limit if deadline is None else min(limit, deadline)
