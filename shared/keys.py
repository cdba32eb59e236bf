"""Every Redis key, queue and task name structq uses, in one place.

Keys are namespaced under ``structq:`` so a Redis shared with other apps stays readable.
Celery's own queue lists are named by :func:`queue_name` (Celery stores a queue as a Redis
list of that exact name; priority levels add suffixes, see Celery's Redis transport docs).
"""

from __future__ import annotations

__all__ = [
    "ALL_INDEX",
    "CANCEL_CHANNEL",
    "DEAD_LETTER",
    "DEADLINES",
    "DELIVERY_PREFIX",
    "DONE_CHANNEL",
    "HOOKS_PREFIX",
    "IDEMPOTENCY_PREFIX",
    "JOB_PREFIX",
    "PRIORITY_LEVELS",
    "QUEUE_PREFIX",
    "QUEUE_SEP",
    "STATUS_INDEX_PREFIX",
    "STREAM_PREFIX",
    "STREAM_TTL_S",
    "TASK_NAME",
    "WEBHOOK_QUEUE",
    "WEBHOOK_SCHEDULE",
    "WEBHOOK_TASK_NAME",
    "WEBHOOK_WORKER_PREFIX",
    "WORKER_PREFIX",
    "client_index",
    "model_queued_index",
    "delivery_key",
    "hooks_key",
    "idempotency_key",
    "job_key",
    "kombu_priority",
    "kombu_priority_steps",
    "queue_list",
    "queue_lists",
    "queue_name",
    "status_index",
    "stream_key",
    "task_id_for",
    "worker_key",
]

# Hash per job: field ``status`` (the state machine's current state, the guard of every
# transition), field ``job`` (the whole ``Job`` record as JSON, rewritten on each transition),
# ``run`` (the attempt number of the latest claim) and ``owner`` (the worker that claimed it),
# which guard a run's own writes, and ``cancel`` (set while a running job's cancel is pending).
JOB_PREFIX = "structq:job:"

# Sorted sets of job ids: every job by creation time, and one per status by the time the job
# entered it. They back listing, the dead-letter view and the janitor's scan of running jobs.
ALL_INDEX = "structq:index:all"
STATUS_INDEX_PREFIX = "structq:index:"

# Sorted set: queued jobs that have a deadline, scored by it (epoch seconds).
DEADLINES = "structq:deadlines"

# Sorted set: jobs that ended ``max_attempts_exceeded``, by when; `retry` takes them out.
DEAD_LETTER = "structq:dead"

# String per (client, Idempotency-Key): "<body sha256> <job id>", with the idempotency TTL.
IDEMPOTENCY_PREFIX = "structq:idem:"

# Pub/sub channel: ids of running jobs a client asked to cancel; the owning worker aborts them.
CANCEL_CHANNEL = "structq:cancel"

# Webhooks. A hash per delivery (one event of one job, retried under one webhook-id): its
# spec and payload, attempts so far, state. The Celery queue the webhook worker consumes, the
# task it runs, and a sorted set of deliveries waiting for their next attempt (by its time).
DELIVERY_PREFIX = "structq:delivery:"
WEBHOOK_QUEUE = "structq.webhooks"
WEBHOOK_TASK_NAME = "structq.deliver_webhook"
WEBHOOK_SCHEDULE = "structq:webhooks:scheduled"
# String per live webhook worker ({"pid": ...}, short TTL): its readiness and liveness.
WEBHOOK_WORKER_PREFIX = "structq:webhook-worker:"
# A list per job of its webhook attempts (JSON), shown as the job's `webhook_deliveries`.
HOOKS_PREFIX = "structq:hooks:"

# String per live worker: its announcement (model served, queue, ready_at) with a short TTL
# that the worker keeps renewing once its engine is up; it disappears when the worker dies.
WORKER_PREFIX = "structq:worker:"

# Pub/sub channel: the id of every job that just reached a terminal status, published by the
# same script that writes the status, so a long-polling client wakes the moment it is readable.
DONE_CHANNEL = "structq:done"
# A streaming job's output as the worker generates it: one Redis stream per job, entries
# {"a": attempt, "d": text delta}, then {"a": attempt, "end": "1"} once the job's terminal
# status is written. Kept STREAM_TTL_S after its last entry.
STREAM_PREFIX = "structq:stream:"
STREAM_TTL_S = 600

# The Celery task every job message names. The gateway writes these messages itself.
TASK_NAME = "structq.run_job"

# Prefix of the Celery queue for one model's pool: ``structq.jobs.<model>``.
QUEUE_PREFIX = "structq.jobs."

# Job priorities (higher runs first) and the Redis list each one's messages go to. Kombu's
# Redis transport keeps one list per priority step, named ``<queue><sep><step>`` (step 0 is
# the bare queue name) and pops them in step order; structq's priority 3 is kombu's step 0.
PRIORITY_LEVELS = 4
QUEUE_SEP = ":"
_KOMBU_STEP = 3


def job_key(job_id: str) -> str:
    return f"{JOB_PREFIX}{job_id}"


def worker_key(worker_id: str) -> str:
    return f"{WORKER_PREFIX}{worker_id}"


def queue_name(model: str) -> str:
    """The Celery queue (a Redis list of this name) that the pool serving ``model`` consumes."""
    return f"{QUEUE_PREFIX}{model}"


def queue_list(model: str, priority: int) -> str:
    """The Redis list holding ``model``'s job messages of ``priority``."""
    step = kombu_priority(priority)
    return queue_name(model) if step == 0 else f"{queue_name(model)}{QUEUE_SEP}{step}"


def queue_lists(model: str) -> list[str]:
    """Every list of ``model``'s queue, highest priority first (what a worker pops)."""
    return [queue_list(model, p) for p in reversed(range(PRIORITY_LEVELS))]


def kombu_priority(priority: int) -> int:
    """A message's kombu priority (0 pops first) for a structq priority (higher runs first)."""
    return (PRIORITY_LEVELS - 1 - priority) * _KOMBU_STEP


def kombu_priority_steps() -> list[int]:
    return [kombu_priority(p) for p in reversed(range(PRIORITY_LEVELS))]


def status_index(status: str) -> str:
    return f"{STATUS_INDEX_PREFIX}{status}"


def model_queued_index(model: str) -> str:
    """The model's queued jobs (what its queue-depth limit counts), kept by the same scripts."""
    return f"{STATUS_INDEX_PREFIX}model:{model}:queued"


def client_index(client: str, status: str | None = None) -> str:
    """The jobs one client (API key name) submitted: all of them, or those in ``status``.
    Kept by the same scripts that keep the global indexes."""
    return f"{STATUS_INDEX_PREFIX}client:{client}:{status or 'all'}"


def idempotency_key(client: str, key: str) -> str:
    return f"{IDEMPOTENCY_PREFIX}{client}:{key}"


def task_id_for(job_id: str, suffix: str = "") -> str:
    """A task message id for ``job_id``: the job id, plus a suffix on re-queued messages so
    that no two messages in flight (kombu keys unacked ones by it) share an id."""
    return f"{job_id}~{suffix}" if suffix else job_id


def stream_key(job_id: str) -> str:
    return f"{STREAM_PREFIX}{job_id}"


def delivery_key(delivery_id: str) -> str:
    return f"{DELIVERY_PREFIX}{delivery_id}"


def hooks_key(job_id: str) -> str:
    return f"{HOOKS_PREFIX}{job_id}"
