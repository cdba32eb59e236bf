"""Every Redis key, queue and task name structq uses, in one place.

Keys are namespaced under ``structq:`` so a Redis shared with other apps stays readable.
Celery's own queue lists are named by :func:`queue_name` (Celery stores a queue as a Redis
list of that exact name; priority levels add suffixes, see Celery's Redis transport docs).
"""

from __future__ import annotations

__all__ = [
    "DONE_CHANNEL",
    "HEARTBEAT_TTL_S",
    "JOB_PREFIX",
    "QUEUE_PREFIX",
    "TASK_NAME",
    "WORKER_PREFIX",
    "job_key",
    "queue_name",
    "worker_key",
]

# Hash per job: field ``status`` (the state machine's current state, the guard of every
# transition) and field ``job`` (the whole ``Job`` record as JSON, rewritten on each transition).
JOB_PREFIX = "structq:job:"

# String per live worker: its announcement (model served, queue, ready_at) with a short TTL
# that the worker keeps renewing once its engine is up; it disappears when the worker dies.
WORKER_PREFIX = "structq:worker:"

# Lifetime of a worker's announcement; the worker renews it every third of that.
HEARTBEAT_TTL_S = 15

# Pub/sub channel: the id of every job that just reached a terminal status, published by the
# same script that writes the status, so a long-polling client wakes the moment it is readable.
DONE_CHANNEL = "structq:done"

# The Celery task every job message names. The gateway writes these messages itself.
TASK_NAME = "structq.run_job"

# Prefix of the Celery queue for one model's pool: ``structq.jobs.<model>``.
QUEUE_PREFIX = "structq.jobs."


def job_key(job_id: str) -> str:
    return f"{JOB_PREFIX}{job_id}"


def worker_key(worker_id: str) -> str:
    return f"{WORKER_PREFIX}{worker_id}"


def queue_name(model: str) -> str:
    """The Celery queue (a Redis list of this name) that the pool serving ``model`` consumes."""
    return f"{QUEUE_PREFIX}{model}"
